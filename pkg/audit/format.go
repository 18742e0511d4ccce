package audit

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// TableTimeFormat is the time layout of FormatTable.
const TableTimeFormat = "Jan 02 15:04:05.000"

const tableRow = "%-19s  %-14s %7s %-15s %-8s %-10s %-16s %s\n"

// WriteTableHeader writes the header line of the event table.
func WriteTableHeader(w io.Writer) error {
	_, err := fmt.Fprintf(w, tableRow, "TIME", "SANDBOX", "PID", "COMM", "KIND", "DECISION", "RULE", "TARGET / DETAIL")
	return err
}

// WriteTableRow writes ev as one fixed-width line of the event table, so
// rows can be written one at a time (sluice logs --follow).
func WriteTableRow(w io.Writer, ev *Event) error {
	pid := "-"
	if ev.PID != 0 {
		pid = strconv.FormatUint(uint64(ev.PID), 10)
	}
	ts := "-"
	if !ev.Time.IsZero() {
		ts = ev.Time.Format(TableTimeFormat)
	}
	target, detail := describe(ev)
	td := target
	if detail != "" {
		td += "  " + detail
	}
	_, err := fmt.Fprintf(w, tableRow, ts, clip(dash(ev.Sandbox), 14), pid, clip(dash(ev.Comm), 15),
		dash(ev.Kind), dash(ev.Decision), clip(dash(ev.Rule), 16), td)
	return err
}

// FormatTable writes events as the readable table of `sluice logs`.
func FormatTable(w io.Writer, events []Event) error {
	if err := WriteTableHeader(w); err != nil {
		return fmt.Errorf("writing table: %w", err)
	}
	for i := range events {
		if err := WriteTableRow(w, &events[i]); err != nil {
			return fmt.Errorf("writing table: %w", err)
		}
	}
	return nil
}

// describe returns the target column and the details of ev.
func describe(ev *Event) (target, detail string) {
	var d []string
	add := func(format string, args ...any) { d = append(d, fmt.Sprintf(format, args...)) }
	switch ev.Kind {
	case KindDNS:
		target = ev.QName
		if ev.QType != "" {
			target += " " + ev.QType
		}
		if len(ev.Answers) > 0 {
			add("-> %s", strings.Join(ev.Answers, ","))
		} else if ev.Rcode != "" {
			add("%s", ev.Rcode)
		}
	case KindConn:
		target = firstNonEmpty(ev.Host, ev.SNI, ev.Dst)
		if ev.Dst != "" && ev.Dst != target {
			add("dst=%s", ev.Dst)
		}
		if ev.Proto != "" {
			add("%s", ev.Proto)
		}
		if ev.BytesUp != 0 || ev.BytesDown != 0 {
			add("up=%s down=%s", bytesString(ev.BytesUp), bytesString(ev.BytesDown))
		}
		if ev.DurationMS != 0 {
			add("%s", (time.Duration(ev.DurationMS) * time.Millisecond).String())
		}
	case KindHTTP:
		target = strings.TrimSpace(ev.Method + " " + firstNonEmpty(ev.Host, ev.SNI) + ev.Path)
		if ev.Status != 0 {
			add("%d", ev.Status)
		}
		if ev.LatencyMS != 0 {
			add("%.1fms", ev.LatencyMS)
		}
		if len(ev.Injected) > 0 {
			add("injected=%s", strings.Join(ev.Injected, ","))
		}
	case KindKernel:
		target = firstNonEmpty(ev.Dst, ev.Host)
		if ev.Proto != "" {
			add("%s", ev.Proto)
		}
	case KindCallback:
		target = ev.Host
		if ev.LatencyMS != 0 {
			add("%.1fms", ev.LatencyMS)
		}
	case KindAudit:
		target = ev.Sink
		if ev.Dropped != 0 {
			add("dropped=%d", ev.Dropped)
		}
		if ev.SinkErrors != 0 {
			add("errors=%d", ev.SinkErrors)
		}
	default:
		target = firstNonEmpty(ev.Host, ev.SNI, ev.QName, ev.Dst)
	}
	if ev.Ecosystem != "" {
		p := ev.Ecosystem + ":" + ev.Package
		if ev.Version != "" {
			p += "@" + ev.Version
		}
		add("pkg=%s", p)
	}
	if ev.Reason != "" {
		add("(%s)", ev.Reason)
	}
	return dash(target), strings.Join(d, " ")
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

func bytesString(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fG", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fM", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fk", float64(n)/(1<<10))
	}
	return strconv.FormatInt(n, 10)
}

// PackageFetch is one package a sandbox downloaded, with how many requests
// fetched it (a Go module's .info, .mod and .zip count as three).
type PackageFetch struct {
	Sandbox   string    `json:"sandbox,omitempty"`
	Ecosystem string    `json:"ecosystem"`
	Package   string    `json:"package"`
	Version   string    `json:"version,omitempty"`
	Count     int       `json:"count"`
	First     time.Time `json:"first"`
}

// PackageOf returns the package ev fetched: from its Ecosystem fields, or
// else by classifying its host and path. ok is false when ev is not a
// package download.
func PackageOf(ev *Event) (ecosystem, pkg, version string, ok bool) {
	if ev.Ecosystem != "" && ev.Package != "" {
		return ev.Ecosystem, ev.Package, ev.Version, true
	}
	if ev.Kind != KindHTTP || ev.Path == "" {
		return "", "", "", false
	}
	return ClassifyPackage(firstNonEmpty(ev.Host, ev.SNI), ev.Path)
}

// Packages lists the packages fetched in events: one entry per sandbox,
// ecosystem, package and version, sorted. Refused or failed requests
// (decision deny or error, HTTP status >= 400) are left out; would_deny
// requests went through and are kept. A version-less entry (an index
// lookup) is dropped when the same package was also fetched by version.
func Packages(events []Event) []PackageFetch {
	type key struct{ sb, eco, pkg, ver string }
	agg := map[key]*PackageFetch{}
	for i := range events {
		ev := &events[i]
		if ev.Decision == DecisionDeny || ev.Decision == DecisionError || ev.Status >= 400 {
			continue
		}
		eco, pkg, ver, ok := PackageOf(ev)
		if !ok {
			continue
		}
		k := key{ev.Sandbox, eco, pkg, ver}
		p := agg[k]
		if p == nil {
			p = &PackageFetch{Sandbox: ev.Sandbox, Ecosystem: eco, Package: pkg, Version: ver, First: ev.Time}
			agg[k] = p
		}
		p.Count++
		if !ev.Time.IsZero() && (p.First.IsZero() || ev.Time.Before(p.First)) {
			p.First = ev.Time
		}
	}
	out := make([]PackageFetch, 0, len(agg))
	for k, p := range agg {
		if k.ver == "" {
			versioned := false
			for k2 := range agg {
				if k2.ver != "" && k2.sb == k.sb && k2.eco == k.eco && k2.pkg == k.pkg {
					versioned = true
					break
				}
			}
			if versioned {
				continue
			}
		}
		out = append(out, *p)
	}
	slices.SortFunc(out, func(a, b PackageFetch) int {
		return cmp.Or(cmp.Compare(a.Sandbox, b.Sandbox), cmp.Compare(a.Ecosystem, b.Ecosystem),
			cmp.Compare(a.Package, b.Package), cmp.Compare(a.Version, b.Version))
	})
	return out
}

// FormatPackages writes the package list of `sluice logs --packages`.
func FormatPackages(w io.Writer, pkgs []PackageFetch) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SANDBOX\tECOSYSTEM\tPACKAGE\tVERSION\tREQUESTS")
	for _, p := range pkgs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", dash(p.Sandbox), p.Ecosystem, p.Package, dash(p.Version), p.Count)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("writing package list: %w", err)
	}
	return nil
}
