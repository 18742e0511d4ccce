package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// entry is one rule under one host pattern or prefix.
type entry struct {
	rule    *Rule
	deny    bool
	cond    bool // has paths or methods: decided per request
	ports   []uint16
	methods []string
	globs   []glob
	fold    bool // case_insensitive_paths: globs are lower case, match the lowered path
}

func (e *entry) portOK(port uint16) bool {
	if len(e.ports) == 0 {
		return true
	}
	for _, p := range e.ports {
		if p == port {
			return true
		}
	}
	return false
}

func (e *entry) methodOK(m string) bool {
	if len(e.methods) == 0 {
		return true
	}
	for _, x := range e.methods {
		if x == m {
			return true
		}
	}
	return false
}

// pathSpec returns the specificity of the most specific matching path
// pattern (0 for a rule without paths), or -1 when no pattern matches.
// lower is path in lower case, for a case_insensitive_paths rule. A deny
// rule also matches a path with one trailing '/' removed: "/admin/" is
// not "/admin" for an allow rule, but a deny on /admin refuses it too,
// even against an allow rule for "/admin/".
func (e *entry) pathSpec(path string, lower func() string) int {
	if len(e.globs) == 0 {
		return 0
	}
	if e.fold {
		path = lower()
	}
	best := e.globSpec(path)
	if e.deny && len(path) > 1 && path[len(path)-1] == '/' {
		// Ranked as if the pattern had the '/' too (2 per literal byte),
		// so it ties with an allow pattern for the exact path and wins.
		if s := e.globSpec(path[:len(path)-1]); s >= 0 {
			best = max(best, s+2)
		}
	}
	return best
}

func (e *entry) globSpec(path string) int {
	best := -1
	for i := range e.globs {
		if g := &e.globs[i]; g.spec > best && g.match(path) {
			best = g.spec
		}
	}
	return best
}

// node is a reversed-label trie node: the node of "example.com" is
// root → "com" → "example".
type node struct {
	children map[string]*node
	exact    []*entry // example.com
	self     []*entry // **.example.com
	below    []*entry // *.example.com and **.example.com, for names below
	sub      []*entry // *.example.com (compile time only)
	parent   *node
}

// cidrLevel holds the prefixes of one length.
type cidrLevel struct {
	bits int
	m    map[netip.Prefix][]*entry
}

type matcher struct {
	root   node
	cidr4  []cidrLevel // longest prefix first
	cidr6  []cidrLevel
	static []CIDRRule
}

// cands iterates over the candidate lists of one lookup, most specific
// first. For a name: exact, then **.name, then the wildcards of each parent
// suffix from the longest to the shortest (walking parent pointers up the
// trie). For an address: the prefixes from the longest to the shortest.
// It is a small value: copying it restarts the iteration.
type cands struct {
	n    *node // host mode: current trie node
	step int   // host mode: 0 exact, 1 self, 2 below of n, then parents
	full bool  // host mode: the whole name was found in the trie

	levels []cidrLevel // address mode
	addr   netip.Addr
}

func (c *cands) next() []*entry {
	if c.levels != nil || c.addr.IsValid() {
		for len(c.levels) > 0 {
			l := &c.levels[0]
			c.levels = c.levels[1:]
			pfx, err := c.addr.Prefix(l.bits)
			if err != nil {
				continue
			}
			if es := l.m[pfx]; len(es) > 0 {
				return es
			}
		}
		return nil
	}
	for c.n != nil {
		switch c.step {
		case 0:
			c.step = 1
			if c.full && len(c.n.exact) > 0 {
				return c.n.exact
			}
		case 1:
			c.step = 2
			if c.full && len(c.n.self) > 0 {
				return c.n.self
			}
		default:
			n := c.n
			if c.full {
				// The name's own node: its "below" lists are for longer names.
				c.full = false
				c.n = n.parent
				continue
			}
			c.n = n.parent
			if len(n.below) > 0 {
				return n.below
			}
		}
	}
	return nil
}

func compile(p *Policy) *matcher {
	m := &matcher{}
	v4 := map[int]map[netip.Prefix][]*entry{}
	v6 := map[int]map[netip.Prefix][]*entry{}
	for _, r := range p.Rules {
		e := &entry{rule: r, deny: r.Action == ActionDeny, cond: len(r.Paths) > 0 || len(r.Methods) > 0, ports: r.Ports, methods: r.Methods, fold: r.CaseInsensitivePaths}
		for _, s := range r.Paths {
			if e.fold {
				s = asciiLower(s)
			}
			g, _ := compileGlob(s)
			e.globs = append(e.globs, g)
		}
		for _, h := range r.Hosts {
			kind, suffix := hostExact, h
			switch {
			case strings.HasPrefix(h, "**."):
				kind, suffix = hostSubOrSelf, h[3:]
			case strings.HasPrefix(h, "*."):
				kind, suffix = hostSub, h[2:]
			}
			n := m.root.insert(suffix)
			switch kind {
			case hostExact:
				n.exact = append(n.exact, e)
			case hostSub:
				n.sub = append(n.sub, e)
			case hostSubOrSelf:
				n.self = append(n.self, e)
			}
		}
		for _, c := range r.CIDRs {
			lv := v4
			if c.Addr().Is6() {
				lv = v6
			}
			if lv[c.Bits()] == nil {
				lv[c.Bits()] = map[netip.Prefix][]*entry{}
			}
			lv[c.Bits()][c] = append(lv[c.Bits()][c], e)
			m.static = append(m.static, CIDRRule{Prefix: c, Ports: r.Ports, Direct: r.Direct, Deny: e.deny, Rule: r})
		}
	}
	m.root.finish()
	m.cidr4, m.cidr6 = cidrLevels(v4), cidrLevels(v6)
	return m
}

func cidrLevels(by map[int]map[netip.Prefix][]*entry) []cidrLevel {
	out := make([]cidrLevel, 0, len(by))
	for bits, m := range by {
		out = append(out, cidrLevel{bits, m})
	}
	slices.SortFunc(out, func(a, b cidrLevel) int { return cmp.Compare(b.bits, a.bits) })
	return out
}

func (n *node) insert(suffix string) *node {
	labels := strings.Split(suffix, ".")
	cur := n
	for i := len(labels) - 1; i >= 0; i-- {
		if cur.children == nil {
			cur.children = map[string]*node{}
		}
		next := cur.children[labels[i]]
		if next == nil {
			next = &node{parent: cur}
			cur.children[labels[i]] = next
		}
		cur = next
	}
	return cur
}

func (n *node) finish() {
	if len(n.sub)+len(n.self) > 0 {
		n.below = append(append([]*entry(nil), n.sub...), n.self...)
		slices.SortStableFunc(n.below, func(a, b *entry) int { return cmp.Compare(a.rule.Index, b.rule.Index) })
	}
	n.sub = nil
	for _, c := range n.children {
		c.finish()
	}
}

// hostCands returns the candidates for a normalised name.
func (m *matcher) hostCands(name []byte) cands {
	cur := &m.root
	end := len(name)
	for {
		start := end - 1
		for start >= 0 && name[start] != '.' {
			start--
		}
		next := cur.children[string(name[start+1:end])]
		if next == nil {
			return cands{n: cur, step: 2}
		}
		cur = next
		if start < 0 {
			return cands{n: cur, full: true}
		}
		end = start
	}
}

// addrCands returns the CIDR candidates for addr.
func (m *matcher) addrCands(addr netip.Addr) cands {
	addr = addr.Unmap().WithZone("")
	ls := m.cidr4
	if addr.Is6() {
		ls = m.cidr6
	}
	if ls == nil {
		ls = []cidrLevel{}
	}
	return cands{levels: ls, addr: addr}
}

// ipLiteral reports whether host looks like an IP address literal rather
// than a name (names never end in an all-numeric label).
func ipLiteral(host string) (netip.Addr, bool) {
	if strings.IndexByte(host, ':') < 0 {
		i := strings.LastIndexByte(host, '.')
		last := host[i+1:]
		if last == "" {
			return netip.Addr{}, false
		}
		for j := 0; j < len(last); j++ {
			if last[j] < '0' || last[j] > '9' {
				return netip.Addr{}, false
			}
		}
	}
	h := host
	if len(h) > 1 && h[0] == '[' && h[len(h)-1] == ']' {
		h = h[1 : len(h)-1]
	}
	a, err := netip.ParseAddr(h)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// MatchName answers the resolver: may name be resolved, and as what?
// It is allowed when the most specific host level that has a say holds an
// allow rule (any allow rule: a path- or port-restricted rule still needs
// its name resolved); a deny rule without ports, paths or methods at a
// more specific level refuses it. Invalid names match nothing.
func (p *Policy) MatchName(name string) NameMatch {
	if p == nil || p.m == nil {
		return NameMatch{}
	}
	var buf [maxName + 1]byte
	n := normName(name, &buf)
	if n < 0 {
		return NameMatch{}
	}
	c := p.m.hostCands(buf[:n])
	for es := c.next(); es != nil; es = c.next() {
		var allow, deny *entry
		for _, e := range es {
			switch {
			case !e.deny:
				if allow == nil || (allow.cond || len(allow.ports) > 0) && !e.cond && len(e.ports) == 0 {
					allow = e
				}
			case deny == nil && !e.cond && len(e.ports) == 0:
				deny = e
			}
		}
		if allow != nil {
			r := allow.rule
			return NameMatch{Allowed: true, Rule: r, Remap: r.Remap, Direct: r.Direct}
		}
		if deny != nil {
			return NameMatch{Rule: deny.rule}
		}
	}
	return NameMatch{}
}

// MatchConn answers the proxy for a connection to host:port before any
// request is seen. host is the TLS server name, the HTTP Host or a name
// the address was bound to ("" when unknown: refused); an IP literal is
// matched against the CIDR rules (MatchAddr). The verdict is Splice when
// the deciding allow rule needs nothing at HTTP level, Intercept when it
// injects headers, remaps or calls back, or when a more specific rule
// restricts paths or methods, and Deny when no request on the connection
// could be allowed.
func (p *Policy) MatchConn(host string, port uint16) ConnMatch {
	if p == nil || p.m == nil || host == "" {
		return ConnMatch{}
	}
	if a, ok := ipLiteral(host); ok {
		return p.MatchAddr(a, port)
	}
	var buf [maxName + 1]byte
	n := normName(host, &buf)
	if n < 0 {
		return ConnMatch{}
	}
	c := p.m.hostCands(buf[:n])
	return connWalk(c, port)
}

// MatchAddr answers the proxy (and the kernel allowlist) for a connection
// to addr:port without a name, from the cidrs rules: the longest prefix
// decides, deny winning at equal length. IPv4-mapped addresses are
// matched as IPv4.
func (p *Policy) MatchAddr(addr netip.Addr, port uint16) ConnMatch {
	if p == nil || p.m == nil || !addr.IsValid() {
		return ConnMatch{}
	}
	return connWalk(p.m.addrCands(addr), port)
}

// better reports whether unconditional entry a outranks b at one level:
// a port-restricted rule beats one for any port, deny beats allow, then
// the earlier rule.
func better(a, b *entry) bool {
	if ap, bp := len(a.ports) > 0, len(b.ports) > 0; ap != bp {
		return ap
	}
	if a.deny != b.deny {
		return a.deny
	}
	return a.rule.Index < b.rule.Index
}

func connWalk(c cands, port uint16) ConnMatch {
	var firstAllow *Rule
	needHTTP := false
	for es := c.next(); es != nil; es = c.next() {
		var best *entry
		for _, e := range es {
			if !e.portOK(port) {
				continue
			}
			if e.cond {
				needHTTP = true
				if !e.deny && firstAllow == nil {
					firstAllow = e.rule
				}
				continue
			}
			if best == nil || better(e, best) {
				best = e
			}
		}
		if best == nil {
			continue
		}
		if best.deny {
			if firstAllow == nil {
				return ConnMatch{Verdict: VerdictDeny, Rule: best.rule}
			}
			return ConnMatch{Verdict: VerdictIntercept, Rule: firstAllow}
		}
		if needHTTP || best.rule.NeedsIntercept() {
			return ConnMatch{Verdict: VerdictIntercept, Rule: best.rule}
		}
		return ConnMatch{Verdict: VerdictSplice, Rule: best.rule}
	}
	if firstAllow != nil {
		return ConnMatch{Verdict: VerdictIntercept, Rule: firstAllow}
	}
	return ConnMatch{}
}

// MatchRequest answers the proxy for one HTTP request. path is the
// decoded canonical path (Target.Match; the proxy calls it through
// MatchPrepared); a query string is ignored. Paths match case-sensitively
// unless the rule sets case_insensitive_paths. Among the rules whose host (or CIDR,
// for an IP literal), port, method and path all match, the most specific
// host level decides; within it the most specific path, then a rule that
// names methods, then one that names ports, then deny over allow, then
// the earlier rule. Nothing matching is a refusal.
func (p *Policy) MatchRequest(host string, port uint16, method, path string) RequestMatch {
	if p == nil || p.m == nil {
		return RequestMatch{Reason: "no policy"}
	}
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	if path == "" {
		path = "/"
	}
	var c cands
	if a, ok := ipLiteral(host); ok {
		c = p.m.addrCands(a)
	} else {
		var buf [maxName + 1]byte
		n := normName(host, &buf)
		if n < 0 {
			return RequestMatch{Reason: fmt.Sprintf("%q is not a valid host name", host)}
		}
		c = p.m.hostCands(buf[:n])
	}
	start := c
	var lowered string
	lower := func() string {
		if lowered == "" {
			lowered = asciiLower(path)
		}
		return lowered
	}
	for es := c.next(); es != nil; es = c.next() {
		var best *entry
		bestSpec := 0
		for _, e := range es {
			if !e.portOK(port) || !e.methodOK(method) {
				continue
			}
			spec := e.pathSpec(path, lower)
			if spec < 0 {
				continue
			}
			if best == nil || outranks(e, spec, best, bestSpec) {
				best, bestSpec = e, spec
			}
		}
		if best == nil {
			continue
		}
		if best.deny {
			return RequestMatch{Rule: best.rule, Reason: fmt.Sprintf("rule %s denies %s %s%s", best.rule.Name, method, host, path)}
		}
		return RequestMatch{Allowed: true, Rule: best.rule}
	}
	return RequestMatch{Reason: noMatchReason(start, host, port, method, path)}
}

func outranks(a *entry, as int, b *entry, bs int) bool {
	if as != bs {
		return as > bs
	}
	if am, bm := len(a.methods) > 0, len(b.methods) > 0; am != bm {
		return am
	}
	return better(a, b)
}

// noMatchReason explains a request no rule matched, naming what the
// closest allow rule for the host would accept.
func noMatchReason(c cands, host string, port uint16, method, path string) string {
	for es := c.next(); es != nil; es = c.next() {
		for _, e := range es {
			if e.deny {
				continue
			}
			r := e.rule
			var what []string
			if !e.portOK(port) {
				what = append(what, "ports "+joinPorts(r.Ports))
			}
			if len(r.Methods) > 0 {
				what = append(what, "methods "+strings.Join(r.Methods, ", "))
			}
			if len(r.Paths) > 0 {
				what = append(what, "paths "+strings.Join(r.Paths, ", "))
			}
			return fmt.Sprintf("no rule allows %s %s%s on port %d; rule %s allows only %s", method, host, path, port, r.Name, strings.Join(what, " and "))
		}
	}
	return fmt.Sprintf("no rule allows %s %s%s on port %d", method, host, path, port)
}

func joinPorts(ps []uint16) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = fmt.Sprint(p)
	}
	return strings.Join(s, ", ")
}

// StaticCIDRs returns the cidrs of every rule, in rule order, for the
// kernel allowlist.
func (p *Policy) StaticCIDRs() []CIDRRule {
	if p == nil || p.m == nil {
		return nil
	}
	return slices.Clone(p.m.static)
}
