package suggest

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/policy"
)

// SiblingGlob is how many distinct paths that differ in one segment only
// collapse into one glob with '*' in that segment.
const SiblingGlob = 4

// Options selects what Suggest reads.
type Options struct {
	// Sandbox keeps only the events of this sandbox ("" keeps all).
	Sandbox string
	// Source names the log in the header comment.
	Source string
}

// Result is a suggested policy.
type Result struct {
	// YAML is the policy text, commented.
	YAML []byte
	// Policy is YAML parsed.
	Policy *policy.Policy
	// Events is how many events were used; Skipped how many were not
	// (refused, other kinds, other sandboxes).
	Events, Skipped int
	// Observations are the recorded decisions the policy allows (with the
	// executable that made each), as replayed by Decide.
	Observations []policy.Observation
}

// hostUse is everything the log says about one host (or address).
type hostUse struct {
	key      string // host name, or address for cidrs
	addr     netip.Addr
	ports    map[uint16]bool
	methods  map[string]bool
	paths    map[string]bool
	exes     map[string]bool
	noExe    bool // some event had no executable
	injected map[string]bool
	requests int
	conns    int
	dnsOnly  bool
}

func (h *hostUse) touch(exe string) {
	if exe == "" {
		h.noExe = true
		return
	}
	h.exes[exe] = true
}

// allowedDecision reports whether an event records something that was let
// through (or would have been refused in audit mode, but was let through).
func allowedDecision(d string) bool {
	switch d {
	case audit.DecisionAllow, audit.DecisionWouldDeny, audit.DecisionSplice, audit.DecisionIntercept:
		return true
	}
	return false
}

// Suggest builds the policy for evs. It fails when the log holds nothing
// to allow.
func Suggest(evs []audit.Event, o Options) (*Result, error) {
	res := &Result{}
	hosts := map[string]*hostUse{}
	get := func(key string) *hostUse {
		h := hosts[key]
		if h == nil {
			h = &hostUse{key: key, ports: map[uint16]bool{}, methods: map[string]bool{}, paths: map[string]bool{},
				exes: map[string]bool{}, injected: map[string]bool{}, dnsOnly: true}
			if a, err := netip.ParseAddr(key); err == nil {
				h.addr = a.Unmap()
			}
			hosts[key] = h
		}
		return h
	}
	// Ports of intercepted hosts come from their conn events.
	for _, ev := range evs {
		if (o.Sandbox != "" && ev.Sandbox != o.Sandbox) || !allowedDecision(ev.Decision) {
			res.Skipped++
			continue
		}
		var port uint16
		var addr netip.Addr
		if ap, err := netip.ParseAddrPort(ev.Dst); err == nil {
			addr, port = ap.Addr().Unmap(), ap.Port()
		}
		switch ev.Kind {
		case audit.KindDNS:
			name, ok := policy.NormalizeName(ev.QName)
			if !ok {
				res.Skipped++
				continue
			}
			get(name)
			res.Observations = append(res.Observations, policy.Observation{Kind: "dns", Host: name, Exe: ev.Exe})
		case audit.KindConn:
			host := ev.SNI
			if host == "" {
				host = ev.Host
			}
			if n, ok := policy.NormalizeName(host); ok && host != "" {
				host = n
			} else if addr.IsValid() {
				host = addr.String()
			} else {
				res.Skipped++
				continue
			}
			h := get(host)
			h.dnsOnly = false
			h.conns++
			if port != 0 {
				h.ports[port] = true
			}
			h.touch(ev.Exe)
			obs := policy.Observation{Kind: "conn", Host: host, Port: port, Exe: ev.Exe}
			if h.addr.IsValid() {
				obs = policy.Observation{Kind: "conn", Addr: h.addr, Port: port, Exe: ev.Exe}
			}
			res.Observations = append(res.Observations, obs)
		case audit.KindHTTP:
			host, ok := policy.NormalizeName(ev.Host)
			if ev.Host == "" || ev.Method == "" {
				res.Skipped++
				continue
			}
			if !ok {
				if a, err := netip.ParseAddr(strings.Trim(ev.Host, "[]")); err == nil {
					host = a.Unmap().String()
				} else {
					res.Skipped++
					continue
				}
			}
			h := get(host)
			h.dnsOnly = false
			h.requests++
			if port != 0 {
				h.ports[port] = true
			}
			h.methods[strings.ToUpper(ev.Method)] = true
			path := ev.Path
			if i := strings.IndexAny(path, "?#"); i >= 0 {
				path = path[:i]
			}
			if path == "" {
				path = "/"
			}
			h.paths[path] = true
			for _, n := range ev.Injected {
				h.injected[n] = true
			}
			h.touch(ev.Exe)
			res.Observations = append(res.Observations, policy.Observation{Kind: "http", Host: host, Port: port, Method: strings.ToUpper(ev.Method), Path: path, Exe: ev.Exe})
		default:
			res.Skipped++
			continue
		}
		res.Events++
	}
	if len(hosts) == 0 {
		return nil, fmt.Errorf("the audit log records nothing allowed%s; nothing to suggest", forSandbox(o.Sandbox))
	}
	res.YAML = render(hosts, o, res)
	p, err := policy.Parse("suggested.yaml", res.YAML)
	if err != nil {
		return nil, fmt.Errorf("the suggested policy does not parse (a bug): %w", err)
	}
	res.Policy = p
	// Every observation must be allowed by what was written: the policy
	// is checked against the log before it is handed out.
	for _, obs := range res.Observations {
		ports := []uint16{obs.Port}
		if obs.Port == 0 {
			// An http event without a destination: the ports its host's
			// connections used (any port when none was recorded).
			ports = ports[:0]
			for port := range hosts[obs.Host].ports {
				ports = append(ports, port)
			}
			if len(ports) == 0 {
				ports = append(ports, 443)
			}
		}
		for _, port := range ports {
			obs.Port = port
			if d := p.Decide(obs); !d.Allowed {
				return nil, fmt.Errorf("the suggested policy refuses a recorded %s %s%s port %d (a bug): %s", obs.Kind, obs.Host, obs.Path, port, d.Reason)
			}
		}
	}
	return res, nil
}

func forSandbox(s string) string {
	if s == "" {
		return ""
	}
	return " for sandbox " + s
}

// render writes the commented policy.
func render(hosts map[string]*hostUse, o Options, res *Result) []byte {
	keys := make([]string, 0, len(hosts))
	for k := range hosts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	src := o.Source
	if src == "" {
		src = "an audit log"
	}
	fmt.Fprintf(&b, "# Suggested by `sluice policy suggest` from %s%s:\n", src, forSandbox(o.Sandbox))
	fmt.Fprintf(&b, "# %d events used, %d skipped (refused, other kinds or sandboxes).\n", res.Events, res.Skipped)
	b.WriteString("# It allows what the log recorded as allowed or would_deny, and nothing else.\n")
	b.WriteString("# Review it: secret placeholders ({NAME}) need a secret source, and a\n")
	b.WriteString("# header's value format (e.g. \"Bearer {NAME}\") was not recorded.\n")
	b.WriteString("version: 1\nrules:\n")
	names := map[string]bool{}
	for _, k := range keys {
		h := hosts[k]
		name := ruleName(k, names)
		fmt.Fprintf(&b, "  # %s\n", summary(h))
		fmt.Fprintf(&b, "  - name: %s\n", name)
		if h.addr.IsValid() {
			fmt.Fprintf(&b, "    cidrs: [%q]\n", h.addr.String())
		} else {
			fmt.Fprintf(&b, "    hosts: [%q]\n", k)
		}
		if len(h.ports) > 0 {
			ps := make([]int, 0, len(h.ports))
			for p := range h.ports {
				ps = append(ps, int(p))
			}
			sort.Ints(ps)
			s := make([]string, len(ps))
			for i, p := range ps {
				s[i] = strconv.Itoa(p)
			}
			fmt.Fprintf(&b, "    ports: [%s]\n", strings.Join(s, ", "))
		}
		if len(h.methods) > 0 {
			fmt.Fprintf(&b, "    methods: [%s]\n", strings.Join(sortedSet(h.methods), ", "))
		}
		if len(h.paths) > 0 {
			paths := collapse(sortedSet(h.paths))
			q := make([]string, len(paths))
			for i, p := range paths {
				q[i] = strconv.Quote(p)
			}
			fmt.Fprintf(&b, "    paths: [%s]\n", strings.Join(q, ", "))
		}
		if len(h.exes) == 1 && !h.noExe {
			exe := sortedSet(h.exes)[0]
			fmt.Fprintf(&b, "    processes: [%q]        # the only executable that used it\n", exe)
		}
		if len(h.injected) > 0 {
			b.WriteString("    headers:                # injected in the log; values are not recorded\n")
			for _, n := range sortedSet(h.injected) {
				fmt.Fprintf(&b, "      - {name: %q, type: secret, value: \"{%s}\"}\n", n, secretName(name, n))
			}
		}
	}
	return []byte(b.String())
}

func summary(h *hostUse) string {
	var parts []string
	switch {
	case h.dnsOnly:
		parts = append(parts, "only resolved in the log, never connected to")
	case h.requests > 0:
		parts = append(parts, plural(h.requests, "request"))
	default:
		parts = append(parts, plural(h.conns, "connection")+" (not intercepted)")
	}
	if len(h.exes) > 0 {
		parts = append(parts, "by "+strings.Join(sortedSet(h.exes), ", "))
	}
	if len(h.ports) == 0 && !h.dnsOnly {
		parts = append(parts, "port not recorded: any port")
	}
	return h.key + ": " + strings.Join(parts, "; ")
}

func plural(n int, w string) string {
	if n == 1 {
		return "1 " + w
	}
	return strconv.Itoa(n) + " " + w + "s"
}

func sortedSet(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ruleName derives a unique rule name from a host or address.
func ruleName(key string, used map[string]bool) string {
	var b strings.Builder
	for _, c := range strings.ToLower(key) {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '.', c == '-', c == '_':
			b.WriteRune(c)
		default:
			b.WriteByte('-')
		}
	}
	name := strings.Trim(b.String(), ".-_")
	if name == "" {
		name = "rule"
	}
	if len(name) > 56 {
		name = name[:56]
	}
	base := name
	for i := 2; used[name]; i++ {
		name = base + "-" + strconv.Itoa(i)
	}
	used[name] = true
	return name
}

// secretName is the placeholder for an injected header of a rule:
// RULE_HEADER in upper case with _ for anything else.
func secretName(rule, header string) string {
	var b strings.Builder
	for _, c := range strings.ToUpper(rule + "_" + header) {
		if c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			b.WriteRune(c)
		} else {
			b.WriteByte('_')
		}
	}
	s := b.String()
	if s[0] >= '0' && s[0] <= '9' {
		s = "S_" + s
	}
	return s
}

// collapse turns sibling paths into globs: when SiblingGlob or more paths
// differ only in one segment, they become one pattern with '*' in that
// segment ("/repos/a/issues", "/repos/b/issues", ... → "/repos/*/issues"),
// repeated until no such group is left (largest group first). The result
// matches every input path.
func collapse(paths []string) []string {
	cur := map[string]bool{}
	for _, p := range paths {
		cur[p] = true
	}
	for {
		groups := map[string][]string{}
		for p := range cur {
			segs := strings.Split(p[1:], "/")
			for i, sg := range segs {
				if strings.Contains(sg, "*") {
					continue
				}
				k := slices.Clone(segs)
				k[i] = "*"
				key := "/" + strings.Join(k, "/")
				groups[key] = append(groups[key], p)
			}
		}
		best := ""
		for k, m := range groups {
			if len(m) < SiblingGlob || !validGlob(k) {
				continue
			}
			if best == "" || len(m) > len(groups[best]) || len(m) == len(groups[best]) && k < best {
				best = k
			}
		}
		if best == "" {
			break
		}
		for _, p := range groups[best] {
			delete(cur, p)
		}
		cur[best] = true
	}
	return sortedSet(cur)
}

func validGlob(p string) bool {
	_, err := policy.Parse("x.yaml", []byte("version: 1\nrules:\n  - name: x\n    hosts: [x.test]\n    paths: ["+strconv.Quote(p)+"]\n"))
	return err == nil
}
