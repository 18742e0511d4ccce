// Command report turns the measurements of scripts/bench/run.sh into the
// benchmark table: the median of each row's rounds, its ratio to the
// baseline measured in the same run, and whether the target is met.
// It prints the table, and writes it as JSON (-json) and as a Markdown
// section (-md).
//
// Input (-in) has one measurement per line: "KEY VALUE". KEY names a
// series (a.ka, c.lat.p99, ...); every round appends one line per series.
// "KEY.inj" lines hold the share of upstream requests that carried the
// injected header, "KEY.err" the count of failed requests, and "KEY na
// REASON" marks a series that could not be measured.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// row is one line of the table.
type row struct {
	ID       string // a, b, ... i
	Key      string // series of the value
	Label    string
	Unit     string
	Base     string  // series of the baseline ("" = none)
	BaseName string  // how the baseline is described
	Target   float64 // ratio target; 0 = none
	Lower    bool    // a lower ratio is better (costs)
	Diff     bool    // report value - baseline instead of a ratio (latency)
	DiffMax  float64 // target for Diff rows: value - baseline < DiffMax
	Info     bool    // context, not a measurement of a path
	Ceiling  bool    // the ratio is a bound on another row's, not a measurement
}

var rows = []row{
	{ID: "a", Key: "a.ka", Label: "direct, keep-alive", Unit: "req/s"},
	{ID: "a", Key: "a.nc", Label: "direct, new TLS connection per request", Unit: "req/s"},
	{ID: "a", Key: "a.h2", Label: "direct, HTTP/2", Unit: "req/s"},
	{ID: "b", Key: "b.ka", Label: "sluice splice, keep-alive", Unit: "req/s", Base: "a.ka", BaseName: "a keep-alive", Target: 0.9},
	{ID: "b", Key: "b.kernel", Label: "sluice splice in the kernel (SLUICE_KERNEL_SPLICE=1), keep-alive", Unit: "req/s", Base: "a.ka", BaseName: "a keep-alive"},
	{ID: "b", Key: "b.kernel", Label: "sluice splice, kernel vs user space", Unit: "req/s", Base: "b.ka", BaseName: "b user space"},
	{ID: "c", Key: "c.ka", Label: "sluice intercept + header, keep-alive", Unit: "req/s", Base: "a.ka", BaseName: "a keep-alive", Target: 0.6},
	{ID: "c", Key: "c.ka", Label: "sluice intercept + header vs squid (e)", Unit: "req/s", Base: "e.ka", BaseName: "e keep-alive", Target: 3},
	{ID: "c", Key: "c.lat.p50", Label: "sluice intercept, p50 added latency", Unit: "us", Base: "a.lat.p50", BaseName: "a p50 (1 client)", Diff: true},
	{ID: "c", Key: "c.lat.p99", Label: "sluice intercept, p99 added latency", Unit: "us", Base: "a.lat.p99", BaseName: "a p99 (1 client)", Diff: true, DiffMax: 1000},
	{ID: "c", Key: "c.h2", Label: "sluice intercept + header, HTTP/2", Unit: "req/s", Base: "a.h2", BaseName: "a HTTP/2", Target: 0.6},
	{ID: "c", Key: "c.audit", Label: "sluice intercept + header, audit log to a file", Unit: "req/s", Base: "c.ka", BaseName: "c without audit", Target: 0.9},
	{ID: "d", Key: "d.nc", Label: "sluice intercept + header, new conn/request", Unit: "req/s", Base: "a.nc", BaseName: "a new conn", Target: 0.5},
	{ID: "d", Key: "d.nc.classical", Label: "sluice intercept + header, new conn/request, classical key exchange (SLUICE_SANDBOX_CLASSICAL_KEX=1)", Unit: "req/s", Base: "a.nc", BaseName: "a new conn"},
	{ID: "e", Key: "e.ka", Label: "squid ssl-bump + header, keep-alive", Unit: "req/s", Base: "a.ka", BaseName: "a keep-alive"},
	{ID: "e", Key: "e.nc", Label: "squid ssl-bump + header, new conn/request", Unit: "req/s", Base: "a.nc", BaseName: "a new conn"},
	{ID: "f", Key: "f.ka", Label: "mitmproxy + header, keep-alive", Unit: "req/s", Base: "a.ka", BaseName: "a keep-alive"},
	{ID: "f", Key: "f.nc", Label: "mitmproxy + header, new conn/request", Unit: "req/s", Base: "a.nc", BaseName: "a new conn"},
	{ID: "g", Key: "g.sluice", Label: "DNS cached answers, sluice resolver", Unit: "qps", Base: "g.peer", BaseName: "dnsmasq (g)", Target: 1},
	{ID: "g", Key: "g.sluice", Label: "DNS cached answers, sluice resolver vs unbound", Unit: "qps", Base: "g.unbound", BaseName: "unbound (g)", Target: 1},
	{ID: "g", Key: "g.unbound", Label: "DNS cached answers, unbound as caching forwarder", Unit: "qps"},
	{ID: "g", Key: "g.peer", Label: "DNS cached answers, dnsmasq as forwarder", Unit: "qps"},
	{ID: "h", Key: "h.inside", Label: "connect() inside vs outside a sandbox", Unit: "ns", Base: "h.outside", BaseName: "outside", Target: 1.1, Lower: true},
	{ID: "i", Key: "i.direct", Label: "bulk BULK direct", Unit: "MB/s"},
	{ID: "i", Key: "i.splice", Label: "bulk BULK through splice", Unit: "MB/s", Base: "i.direct", BaseName: "i direct", Target: 0.95},
	{ID: "i", Key: "i.splice.kernel", Label: "bulk BULK through splice in the kernel (SLUICE_KERNEL_SPLICE=1)", Unit: "MB/s", Base: "i.direct", BaseName: "i direct"},
	{ID: "i", Key: "i.splice.kernel", Label: "bulk BULK splice, kernel vs user space", Unit: "MB/s", Base: "i.splice", BaseName: "i user space"},
	{ID: "i", Key: "i.intercept", Label: "bulk BULK through intercept", Unit: "MB/s", Base: "i.direct", BaseName: "i direct"},
	// CPU time per request, measured on the processes themselves (less
	// sensitive to other work on the machine than throughput is).
	{ID: "a", Key: "a.ka.cpu", Label: "CPU/request: direct client + upstream, keep-alive", Unit: "us"},
	{ID: "b", Key: "b.ka.cpu", Label: "CPU/request: sluice splice, keep-alive", Unit: "us", Base: "a.ka.cpu", BaseName: "a client + upstream"},
	{ID: "b", Key: "b.kernel.cpu", Label: "CPU/request: sluice splice in the kernel (psock worker not counted), keep-alive", Unit: "us", Base: "a.ka.cpu", BaseName: "a client + upstream"},
	{ID: "c", Key: "c.ka.cpu", Label: "CPU/request: sluice intercept, keep-alive", Unit: "us", Base: "a.ka.cpu", BaseName: "a client + upstream"},
	{ID: "e", Key: "e.ka.cpu", Label: "CPU/request: squid, keep-alive", Unit: "us", Base: "c.ka.cpu", BaseName: "sluice (c)", Target: 3},
	{ID: "c", Key: "c.eq", Label: "sluice intercept + header at one offered load (60% of squid's req/s)", Unit: "req/s", Info: true},
	{ID: "e", Key: "e.eq.cpu", Label: "CPU/request: squid vs sluice at one offered load (60% of squid's req/s), keep-alive", Unit: "us", Base: "c.eq.cpu", BaseName: "sluice (c, same load)"},
	{ID: "f", Key: "f.ka.cpu", Label: "CPU/request: mitmproxy, keep-alive", Unit: "us", Base: "c.ka.cpu", BaseName: "sluice (c)"},
	{ID: "a", Key: "a.nc.cpu", Label: "CPU/request: direct client + upstream, new conn", Unit: "us"},
	{ID: "d", Key: "d.nc.cpu", Label: "CPU/request: sluice intercept, new conn", Unit: "us", Base: "a.nc.cpu", BaseName: "a client + upstream"},
	{ID: "d", Key: "d.nc.classical.cpu", Label: "CPU/request: sluice intercept, new conn, classical key exchange", Unit: "us", Base: "a.nc.cpu", BaseName: "a client + upstream"},
	{ID: "e", Key: "e.nc.cpu", Label: "CPU/request: squid, new conn", Unit: "us", Base: "d.nc.cpu", BaseName: "sluice (d)", Target: 2},
	{ID: "e", Key: "e.nc.cpu", Label: "CPU/request: squid vs sluice with the same (classical) key exchange, new conn", Unit: "us", Base: "d.nc.classical.cpu", BaseName: "sluice classical (d)"},
	{ID: "f", Key: "f.nc.cpu", Label: "CPU/request: mitmproxy, new conn", Unit: "us", Base: "d.nc.cpu", BaseName: "sluice (d)"},
	// Ceilings: the req/s ratio the machine allows when every process of
	// both rows keeps its cores busy, i.e. direct's CPU per request (client
	// + upstream) over the row's (client + upstream + proxy). A measured
	// ratio near its ceiling is bound by the machine's cores, one far below
	// it by something else (latency, a lock, an idle core).
	{ID: "b", Key: "a.ka.cpu_total", Label: "ceiling: CPU/request of direct over splice's (client + upstream + sluice), keep-alive", Unit: "us", Base: "b.ka.cpu_total", BaseName: "b all processes", Ceiling: true},
	{ID: "c", Key: "a.ka.cpu_total", Label: "ceiling: CPU/request of direct over intercept's (client + upstream + sluice), keep-alive", Unit: "us", Base: "c.ka.cpu_total", BaseName: "c all processes", Ceiling: true},
	{ID: "c", Key: "a.h2.cpu_total", Label: "ceiling: CPU/request of direct over intercept's (client + upstream + sluice), HTTP/2", Unit: "us", Base: "c.h2.cpu_total", BaseName: "c HTTP/2 all processes", Ceiling: true},
	{ID: "e", Key: "a.ka.cpu_total", Label: "ceiling: CPU/request of direct over squid's (client + upstream + squid), keep-alive", Unit: "us", Base: "e.ka.cpu_total", BaseName: "e all processes", Ceiling: true},
	{ID: "-", Key: "noise.busy", Label: "machine busy before each round (not the bench)", Unit: "%", Info: true},
}

// noisy is the busy share above which the report warns that other work
// competed with the measurement.
const noisy = 10.0

type series struct {
	values []float64
	inj    []float64
	errs   float64
	na     string
}

// Result is one row of the JSON output.
type Result struct {
	Row        string    `json:"row"`
	Series     string    `json:"series"`
	Name       string    `json:"name"`
	Unit       string    `json:"unit"`
	Values     []float64 `json:"values,omitempty"`
	Median     *float64  `json:"median"`
	Baseline   string    `json:"baseline,omitempty"`
	BaseMedian *float64  `json:"baseline_median,omitempty"`
	Ratio      *float64  `json:"ratio,omitempty"` // median of per-round ratios when Paired
	// RatioOfMedians is median/baseline_median, for comparison.
	RatioOfMedians *float64 `json:"ratio_of_medians,omitempty"`
	Paired         bool     `json:"paired,omitempty"`
	Added          *float64 `json:"added,omitempty"` // median of per-round differences when Paired
	Target         string   `json:"target,omitempty"`
	Met            *bool    `json:"met,omitempty"`
	Injected       *float64 `json:"header_injected_share,omitempty"`
	Failed         float64  `json:"failed_requests,omitempty"`
	NA             string   `json:"na,omitempty"`
	Info           bool     `json:"info,omitempty"`
	// Ceiling: Ratio bounds the req/s ratio of the row named in Baseline.
	Ceiling bool `json:"ceiling,omitempty"`
}

// Report is the JSON document.
type Report struct {
	Date    string            `json:"date"`
	Machine map[string]string `json:"machine"`
	Setup   map[string]string `json:"setup"`
	Rows    []Result          `json:"rows"`
	// Series holds every measured value by series key, baselines included.
	Series map[string][]float64 `json:"series"`
}

func main() {
	in := flag.String("in", "", "measurements file (required)")
	jsonOut := flag.String("json", "", "write JSON here")
	mdOut := flag.String("md", "", "write a Markdown section here")
	bulk := flag.String("bulk", "1 GiB", "size of the bulk download, for the row labels")
	var meta, setup kvFlag
	flag.Var(&meta, "machine", "KEY=VALUE describing the machine (repeatable)")
	flag.Var(&setup, "setup", "KEY=VALUE describing the run (repeatable)")
	flag.Parse()
	if *in == "" {
		fmt.Fprintln(os.Stderr, "usage: report -in FILE [-json F] [-md F]")
		os.Exit(2)
	}
	data, err := read(*in)
	check(err)
	for i := range rows {
		rows[i].Label = strings.ReplaceAll(rows[i].Label, "BULK", *bulk)
	}
	rep := Report{Date: time.Now().UTC().Format(time.RFC3339), Machine: meta.m, Setup: setup.m, Series: map[string][]float64{}}
	for k, s := range data {
		if len(s.values) > 0 {
			rep.Series[k] = s.values
		}
	}
	for _, r := range rows {
		rep.Rows = append(rep.Rows, evaluate(r, data))
	}
	printTable(os.Stdout, rep)
	if *jsonOut != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		check(err)
		check(os.WriteFile(*jsonOut, append(b, '\n'), 0o644))
	}
	if *mdOut != "" {
		f, err := os.Create(*mdOut)
		check(err)
		writeMarkdown(f, rep)
		check(f.Close())
	}
}

func read(path string) (map[string]*series, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data := map[string]*series{}
	get := func(k string) *series {
		if data[k] == nil {
			data[k] = &series{}
		}
		return data[k]
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		key, val := fields[0], fields[1]
		if val == "na" {
			get(strings.TrimSuffix(strings.TrimSuffix(key, ".inj"), ".err")).na = strings.Join(fields[2:], " ")
			continue
		}
		v, err := strconv.ParseFloat(val, 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
			continue
		}
		switch {
		case strings.HasSuffix(key, ".inj"):
			s := get(strings.TrimSuffix(key, ".inj"))
			s.inj = append(s.inj, v)
		case strings.HasSuffix(key, ".err"):
			get(strings.TrimSuffix(key, ".err")).errs += v
		default:
			s := get(key)
			s.values = append(s.values, v)
		}
	}
	return data, sc.Err()
}

func median(v []float64) (float64, bool) {
	if len(v) == 0 {
		return 0, false
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2], true
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2, true
}

func evaluate(r row, data map[string]*series) Result {
	name := r.ID + ". " + r.Label
	if r.ID == "-" {
		name = r.Label
	}
	res := Result{Row: r.ID, Series: r.Key, Name: name, Unit: r.Unit, Baseline: r.BaseName, Info: r.Info, Ceiling: r.Ceiling}
	s := data[r.Key]
	if s == nil {
		res.NA = "not measured"
		return res
	}
	res.Values, res.NA, res.Failed = s.values, s.na, s.errs
	if m, ok := median(s.inj); ok {
		res.Injected = &m
	}
	m, ok := median(s.values)
	if !ok {
		if res.NA == "" {
			res.NA = "no value"
		}
		return res
	}
	res.Median = &m
	if r.Base == "" {
		return res
	}
	b := data[r.Base]
	if b == nil {
		return res
	}
	bm, ok := median(b.values)
	if !ok {
		return res
	}
	res.BaseMedian = &bm
	// Rounds are interleaved, so round k of a row and round k of its
	// baseline ran moments apart: compare them pairwise and take the median
	// of the per-round comparisons, which cancels load that drifts between
	// rounds. Without pairs, compare the medians.
	paired := len(s.values) == len(b.values) && len(s.values) > 0
	per := func(f func(v, base float64) float64) float64 {
		if !paired {
			return f(m, bm)
		}
		out := make([]float64, len(s.values))
		for i := range s.values {
			out[i] = f(s.values[i], b.values[i])
		}
		md, _ := median(out)
		return md
	}
	res.Paired = paired
	switch {
	case r.Diff:
		d := per(func(v, base float64) float64 { return v - base })
		res.Added = &d
		if r.DiffMax > 0 {
			met := d < r.DiffMax
			res.Met, res.Target = &met, fmt.Sprintf("< %g %s", r.DiffMax, r.Unit)
		}
	case bm > 0 && !slices.Contains(b.values, 0):
		ratio := per(func(v, base float64) float64 { return v / base })
		res.Ratio = &ratio
		rom := m / bm
		res.RatioOfMedians = &rom
		if r.Target > 0 {
			met := ratio >= r.Target
			res.Target = fmt.Sprintf(">= %gx", r.Target)
			if r.Lower {
				met = ratio < r.Target
				res.Target = fmt.Sprintf("< %gx", r.Target)
			}
			res.Met = &met
		}
	}
	return res
}

func num(v *float64) string {
	if v == nil {
		return "n/a"
	}
	switch a := math.Abs(*v); {
	case a >= 100:
		return strconv.FormatFloat(*v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(*v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(*v, 'f', 2, 64)
	}
}

// versus describes the comparison column: a ratio or an added amount.
func versus(r Result) string {
	switch {
	case r.Added != nil:
		sign := "+"
		if *r.Added < 0 {
			sign = "" // num keeps the minus
		}
		return sign + num(r.Added) + " " + r.Unit
	case r.Ratio != nil:
		return fmt.Sprintf("%.2fx", *r.Ratio)
	case r.Info:
		return ""
	case r.Baseline == "" && r.Median != nil:
		return "baseline"
	}
	return "n/a"
}

func verdict(r Result) string {
	switch {
	case r.Met == nil:
		return ""
	case *r.Met:
		return "met (" + r.Target + ")"
	default:
		return "MISSED (" + r.Target + ")"
	}
}

func notes(r Result) string {
	var n []string
	if r.NA != "" {
		n = append(n, r.NA)
	}
	if r.Ceiling && r.Ratio != nil {
		n = append(n, "the most req/s ratio this machine's cores allow")
	}
	if r.Injected != nil {
		n = append(n, fmt.Sprintf("header on %.0f%% of upstream requests", 100**r.Injected))
	}
	if r.Failed > 0 {
		n = append(n, fmt.Sprintf("%.0f failed requests", r.Failed))
	}
	return strings.Join(n, "; ")
}

func printTable(w io.Writer, rep Report) {
	fmt.Fprintf(w, "%-52s %12s %-6s %-18s %10s  %s\n", "row", "median", "unit", "vs", "", "target")
	for _, r := range rep.Rows {
		fmt.Fprintf(w, "%-52s %12s %-6s %-18s %10s  %s", r.Name, num(r.Median), r.Unit, r.Baseline, versus(r), verdict(r))
		if n := notes(r); n != "" {
			fmt.Fprintf(w, "  [%s]", n)
		}
		fmt.Fprintln(w)
	}
	if warn := noiseWarning(rep); warn != "" {
		fmt.Fprintln(w, warn)
	}
}

// noiseWarning says when the machine was busy with other work.
func noiseWarning(rep Report) string {
	for _, r := range rep.Rows {
		if r.Series == "noise.busy" && r.Median != nil && *r.Median > noisy {
			return fmt.Sprintf("WARNING: the machine was %.0f%% busy with other work before the rounds (median); "+
				"absolute numbers and ratios are unreliable, rerun on an idle machine.", *r.Median)
		}
	}
	return ""
}

func writeMarkdown(w io.Writer, rep Report) {
	fmt.Fprintln(w, "| row | median | compared with | ratio / added | target | notes |")
	fmt.Fprintln(w, "|---|---:|---|---:|---|---|")
	for _, r := range rep.Rows {
		med := num(r.Median)
		if r.Median != nil {
			med += " " + r.Unit
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", r.Name, med, r.Baseline, versus(r), verdict(r), notes(r))
	}
	fmt.Fprintln(w)
	if warn := noiseWarning(rep); warn != "" {
		fmt.Fprintln(w, warn)
		fmt.Fprintln(w)
	}
	keys := func(m map[string]string) []string {
		k := make([]string, 0, len(m))
		for x := range m {
			k = append(k, x)
		}
		slices.Sort(k)
		return k
	}
	fmt.Fprintf(w, "Date: %s.", rep.Date)
	for _, k := range keys(rep.Machine) {
		fmt.Fprintf(w, " %s: %s.", k, rep.Machine[k])
	}
	fmt.Fprintln(w)
	for _, k := range keys(rep.Setup) {
		fmt.Fprintf(w, "- %s: %s\n", k, rep.Setup[k])
	}
}

type kvFlag struct{ m map[string]string }

func (f *kvFlag) String() string { return "" }
func (f *kvFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok {
		return fmt.Errorf("want KEY=VALUE, got %q", s)
	}
	if f.m == nil {
		f.m = map[string]string{}
	}
	f.m[k] = v
	return nil
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
}
