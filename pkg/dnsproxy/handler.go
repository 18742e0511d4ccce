package dnsproxy

import (
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/fence"
	"github.com/sluice-dev/sluice/pkg/policy"
)

// Reasons given in audit events.
const (
	reasonNotQuery     = "not a query"
	reasonOpcode       = "opcode not supported"
	reasonQuestions    = "need exactly one question"
	reasonClass        = "class not supported"
	reasonBadVers      = "unsupported edns version"
	reasonInvalidName  = "invalid name"
	reasonNoPolicy     = "no policy"
	reasonNotAllowed   = "name not allowed by policy"
	reasonType         = "query type not resolved by sluice"
	reasonIPv6Off      = "ipv6 disabled by policy"
	reasonUpstream     = "upstream failed"
	reasonChainDenied  = "cname target denied by policy: "
	reasonChainInvalid = "invalid cname target"
	reasonChainLong    = "cname chain too long"
	reasonAllowlist    = "allowlist write failed"
	reasonDropped      = "answer addresses dropped (rebinding guard)"
)

// handler answers one sandbox's queries.
type handler struct {
	r    *Resolver
	sb   *Sandbox
	tmpl templates
}

// ServeDNS implements dns.Handler.
func (h *handler) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	var client netip.AddrPort
	tcp := false
	switch a := w.RemoteAddr().(type) {
	case *net.TCPAddr:
		client, tcp = a.AddrPort(), true
	case *net.UDPAddr:
		client = a.AddrPort()
	}
	if !h.sb.Fence.Query(h.r.now()) {
		h.sb.Fence.Refuse(fence.DNSQPS, netip.AddrPort{}, !tcp)
		_ = w.WriteMsg(qpsRefusal(req))
		return
	}
	rp := h.r.answer(h.sb, req, tcp)
	if rp.msg != nil {
		if err := w.WriteMsg(rp.msg); err != nil {
			h.r.log.Debug("writing dns answer", "sandbox", h.sb.Name, "err", err)
		}
	}
	h.emit(rp.ev, client, tcp)
}

// emit sends ev with the process that sent the query, when the kernel
// recorded it (Sandbox.Origins).
func (h *handler) emit(ev audit.Event, client netip.AddrPort, tcp bool) {
	if h.sb.Origins != nil && client.IsValid() {
		if pid, comm, ok := h.sb.Origins.QueryOrigin(client, tcp); ok {
			ev.PID, ev.Comm = pid, comm
		}
	}
	h.sb.Audit.Emit(ev)
}

// reply is one answer being built, and what the UDP fast path needs to
// reuse it.
type reply struct {
	msg  *dns.Msg
	size int
	ev   audit.Event

	// expires bounds reuse of the answer; zero means never reuse.
	expires time.Time
	// allowedUntil is the allowlist expiry the answer's addresses are
	// known to have, minTTL their smallest TTL as answered.
	allowedUntil time.Time
	minTTL       uint32
	pol          *policy.Policy
	gen          uint64
}

func (rp *reply) finish(rcode int, decision, reason string) *reply {
	rp.msg.Rcode = rcode
	rp.ev.Rcode = dns.RcodeToString[rcode]
	rp.ev.Decision = decision
	if reason != "" {
		rp.ev.Reason = reason
	}
	rp.msg.Truncate(rp.size)
	// Truncate turns compression off when the answer fits without it;
	// compressed it fits too, and owner names then point at the question,
	// whose spelling the fast path replaces.
	rp.msg.Compress = true
	if rcode == dns.RcodeServerFailure || rp.msg.Truncated {
		rp.expires = time.Time{}
	}
	return rp
}

// answer computes the response to req for sb, and its audit event. A nil
// rp.msg means no response is sent.
func (r *Resolver) answer(sb *Sandbox, req *dns.Msg, tcp bool) *reply {
	now := r.now()
	rp := &reply{
		ev: audit.Event{
			V: audit.SchemaVersion, Time: now, Kind: audit.KindDNS,
			Sandbox: sb.Name, CgroupID: sb.ID,
		},
		size:    dns.MinMsgSize,
		expires: now.Add(staticLife),
		gen:     sb.Bindings.gen.Load(),
	}
	if tcp {
		rp.size = dns.MaxMsgSize
	}
	if req.Response {
		rp.ev.Decision, rp.ev.Reason = audit.DecisionDeny, reasonNotQuery
		return rp
	}
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.RecursionAvailable = true
	rp.msg = resp
	if len(req.Question) > 0 {
		rp.ev.QName = req.Question[0].Name
		rp.ev.QType = dns.Type(req.Question[0].Qtype).String()
	}
	if opt := req.IsEdns0(); opt != nil {
		resp.SetEdns0(r.cfg.UDPSize, false)
		if opt.Version() != 0 {
			return rp.finish(dns.RcodeBadVers, audit.DecisionDeny, reasonBadVers)
		}
		if !tcp {
			rp.size = max(int(opt.UDPSize()), dns.MinMsgSize)
		}
	}
	if req.Opcode != dns.OpcodeQuery {
		return rp.finish(dns.RcodeNotImplemented, audit.DecisionDeny, reasonOpcode)
	}
	if len(req.Question) != 1 {
		return rp.finish(dns.RcodeFormatError, audit.DecisionDeny, reasonQuestions)
	}
	q := req.Question[0]
	if q.Qclass != dns.ClassINET {
		return rp.finish(dns.RcodeRefused, audit.DecisionDeny, reasonClass)
	}
	name, ok := normalizeName(q.Name)
	if !ok {
		return rp.finish(dns.RcodeNameError, audit.DecisionDeny, reasonInvalidName)
	}
	rp.ev.QName = name
	m := sb.Policy()
	rp.pol = m
	if m == nil {
		return rp.finish(dns.RcodeNameError, audit.DecisionDeny, reasonNoPolicy)
	}
	auditMode, ipv6 := m.Mode == policy.ModeAudit, m.IPv6
	match := m.MatchName(name)
	if match.Rule != nil {
		rp.ev.Rule = match.Rule.Name
	}
	decision := audit.DecisionAllow
	if !match.Allowed {
		if !auditMode {
			return rp.finish(dns.RcodeNameError, audit.DecisionDeny, reasonNotAllowed)
		}
		decision, rp.ev.Reason = audit.DecisionWouldDeny, reasonNotAllowed
	}
	passthrough := false
	switch q.Qtype {
	case dns.TypeA, dns.TypeCNAME, dns.TypeHTTPS, dns.TypeSVCB:
	case dns.TypeAAAA:
		if !ipv6 {
			return rp.finish(dns.RcodeSuccess, decision, reasonIPv6Off)
		}
	default:
		if !auditMode {
			return rp.finish(dns.RcodeSuccess, audit.DecisionDeny, reasonType)
		}
		decision, rp.ev.Reason, passthrough = audit.DecisionWouldDeny, reasonType, true
	}

	target, remap := name, ""
	if match.Allowed && match.Remap != nil && match.Remap.Host != "" {
		t, ok := normalizeName(match.Remap.Host)
		if !ok {
			return rp.finish(dns.RcodeServerFailure, audit.DecisionError, "invalid remap target")
		}
		target, remap = t, t
		if q.Qtype != dns.TypeA && q.Qtype != dns.TypeAAAA {
			// The mirror's CNAME and HTTPS records describe the mirror,
			// not the name asked: answer NODATA so clients use A/AAAA.
			return rp.finish(dns.RcodeSuccess, decision, "")
		}
	}

	e, err := r.lookup(target, q.Qtype, now)
	if err != nil {
		if r.logLimit(now) {
			r.log.Warn("upstream resolution failed (repeats within 10s not logged; see audit events)",
				"sandbox", sb.Name, "qname", target, "qtype", rp.ev.QType, "err", err)
		}
		return rp.finish(dns.RcodeServerFailure, audit.DecisionError, reasonUpstream)
	}
	rp.expires = e.expires
	age := e.age(now)
	if passthrough {
		for _, rr := range e.answer {
			resp.Answer = append(resp.Answer, withTTL(rr, rr.Header().Ttl-min(age, rr.Header().Ttl)))
		}
		return rp.finish(e.rcode, decision, "")
	}
	if e.rcode == dns.RcodeNameError {
		if remap == "" {
			r.addSOA(resp, e, age)
		}
		return rp.finish(dns.RcodeNameError, decision, "")
	}
	if q.Qtype == dns.TypeCNAME {
		for _, rr := range e.answer {
			if c, ok := rr.(*dns.CNAME); ok && ownerIs(c.Hdr.Name, target) {
				rp.ev.Answers = append(rp.ev.Answers, c.Target)
				resp.Answer = append(resp.Answer, withTTL(c, c.Hdr.Ttl-min(age, c.Hdr.Ttl)))
			}
		}
		if len(resp.Answer) == 0 {
			r.addSOA(resp, e, age)
		}
		return rp.finish(dns.RcodeSuccess, decision, "")
	}

	// Follow the CNAME chain from the target to the final name.
	var chain []*dns.CNAME
	cur := target
	ttl := ^uint32(0)
	for {
		var next *dns.CNAME
		for _, rr := range e.answer {
			if c, ok := rr.(*dns.CNAME); ok && ownerIs(c.Hdr.Name, cur) {
				next = c
				break
			}
		}
		if next == nil {
			break
		}
		if len(chain) == maxChain {
			return rp.finish(dns.RcodeServerFailure, audit.DecisionError, reasonChainLong)
		}
		tname, ok := normalizeName(next.Target)
		if !ok {
			return rp.finish(dns.RcodeNameError, audit.DecisionDeny, reasonChainInvalid)
		}
		if remap == "" {
			// A name in the chain that a rule explicitly denies ends the
			// answer; a name no rule mentions is accepted as an alias of
			// the allowed name (CDNs), since the sandbox asked for the
			// allowed name and the addresses are bound to it.
			if cm := m.MatchName(tname); !cm.Allowed && cm.Rule != nil {
				rp.ev.Rule = cm.Rule.Name
				if !auditMode {
					return rp.finish(dns.RcodeNameError, audit.DecisionDeny, reasonChainDenied+tname)
				}
				decision, rp.ev.Reason = audit.DecisionWouldDeny, reasonChainDenied+tname
			}
		}
		chain = append(chain, next)
		ttl = min(ttl, next.Hdr.Ttl)
		cur = tname
	}

	var finals []dns.RR
	var addrs []netip.Addr
	dropped := false
	for _, rr := range e.answer {
		h := rr.Header()
		if h.Rrtype != q.Qtype || !ownerIs(h.Name, cur) {
			continue
		}
		if len(addrs) == sb.Bindings.perName {
			// More addresses than the name may hold: the excess would be
			// evicted (and revoked) by this very answer, so leave it out.
			break
		}
		switch v := rr.(type) {
		case *dns.A:
			a, ok := netip.AddrFromSlice(v.A)
			if !ok || !r.usable(a.Unmap(), remap != "") {
				dropped = true
				continue
			}
			addrs = append(addrs, a.Unmap())
		case *dns.AAAA:
			a, ok := netip.AddrFromSlice(v.AAAA)
			if !ok || !r.usable(a.Unmap(), remap != "") {
				dropped = true
				continue
			}
			addrs = append(addrs, a.Unmap())
		case *dns.HTTPS:
			rr = &dns.HTTPS{SVCB: stripSVCB(&v.SVCB)}
			rp.ev.Answers = append(rp.ev.Answers, rr.(*dns.HTTPS).Target)
		case *dns.SVCB:
			st := stripSVCB(v)
			rr = &st
			rp.ev.Answers = append(rp.ev.Answers, v.Target)
		}
		ttl = min(ttl, h.Ttl)
		finals = append(finals, rr)
	}
	if dropped && rp.ev.Reason == "" {
		rp.ev.Reason = reasonDropped
	}
	if len(finals) == 0 {
		if remap == "" {
			for _, c := range chain {
				resp.Answer = append(resp.Answer, withTTL(c, c.Hdr.Ttl-min(age, c.Hdr.Ttl)))
			}
			r.addSOA(resp, e, age)
		}
		return rp.finish(dns.RcodeSuccess, decision, "")
	}
	ttl -= min(age, ttl)

	if len(addrs) > 0 {
		until := now.Add(max(time.Duration(ttl)*time.Second, r.cfg.MinTTL) + r.cfg.Grace)
		direct := match.Direct && remap == ""
		if err := r.allow(sb, name, remap, addrs, until, direct); err != nil {
			r.log.Error("allowlist write failed", "sandbox", sb.Name, "qname", name, "err", err)
			return rp.finish(dns.RcodeServerFailure, audit.DecisionError, reasonAllowlist)
		}
		for _, a := range addrs {
			rp.ev.Answers = append(rp.ev.Answers, a.String())
		}
		rp.allowedUntil, rp.minTTL = until, ttl
	}

	if remap != "" {
		// Answer under the name asked, flattened: the client accepts the
		// mirror's addresses as the registry's.
		for _, rr := range finals {
			resp.Answer = append(resp.Answer, renamed(rr, q.Name, ttl))
		}
		return rp.finish(dns.RcodeSuccess, decision, "")
	}
	for i, c := range chain {
		rr := withTTL(c, c.Hdr.Ttl-min(age, c.Hdr.Ttl))
		if i == 0 {
			rr.Header().Name = q.Name // the client's spelling (0x20)
		}
		resp.Answer = append(resp.Answer, rr)
	}
	for _, rr := range finals {
		h := rr.Header()
		out := withTTL(rr, h.Ttl-min(age, h.Ttl))
		if len(chain) == 0 {
			out.Header().Name = q.Name
		}
		resp.Answer = append(resp.Answer, out)
	}
	return rp.finish(dns.RcodeSuccess, decision, "")
}

// allow writes addrs into sb's allowlist (skipping entries that are fresh
// enough) and records the bindings. Nothing is bound unless every write
// succeeded.
func (r *Resolver) allow(sb *Sandbox, name, target string, addrs []netip.Addr, until time.Time, direct bool) error {
	var written []netip.Addr
	for _, a := range addrs {
		if !sb.Bindings.needsAllow(a, until, direct) {
			continue
		}
		if err := sb.Allow.Allow(a, until, direct); err != nil {
			return err
		}
		written = append(written, a)
	}
	released := sb.Bindings.Add(name, target, addrs, until)
	for _, a := range written {
		sb.Bindings.allowed(a, until, direct)
	}
	if rv, ok := sb.Allow.(Revoker); ok {
		for _, a := range released {
			if err := rv.Revoke(a); err != nil {
				r.log.Warn("allowlist revoke failed", "sandbox", sb.Name, "addr", a, "err", err)
			}
		}
	}
	return nil
}

// usable reports whether an upstream answer may hand addr to the sandbox.
// Unspecified, "this network", link-local, multicast and metadata addresses
// never are; loopback only with Config.AllowLoopback. Remap targets are
// chosen by the policy author and trusted beyond the unspecified check.
func (r *Resolver) usable(a netip.Addr, remapped bool) bool {
	if a.IsUnspecified() {
		return false
	}
	if remapped {
		return true
	}
	switch {
	case a.Is4() && a.As4()[0] == 0,
		a.IsLinkLocalUnicast(), a.IsMulticast(), a.IsInterfaceLocalMulticast(),
		a.IsLinkLocalMulticast(), a == metadataV6:
		return false
	case a.IsLoopback():
		return r.cfg.AllowLoopback
	}
	return true
}

var metadataV6 = netip.MustParseAddr("fd00:ec2::254")

// addSOA adds the negative answer's SOA to the authority section, with the
// RFC 2308 negative TTL, aged.
func (r *Resolver) addSOA(resp *dns.Msg, e *entry, age uint32) {
	if e.soa == nil {
		return
	}
	ttl := min(e.soa.Hdr.Ttl, e.soa.Minttl)
	resp.Ns = append(resp.Ns, withTTL(e.soa, ttl-min(age, ttl)))
}

// withTTL returns a copy of rr with the given TTL.
func withTTL(rr dns.RR, ttl uint32) dns.RR {
	c := dns.Copy(rr)
	c.Header().Ttl = ttl
	return c
}

// renamed returns a copy of rr owned by name with the given TTL.
func renamed(rr dns.RR, name string, ttl uint32) dns.RR {
	c := dns.Copy(rr)
	c.Header().Name = name
	c.Header().Ttl = ttl
	return c
}

// stripSVCB returns a copy of s without the ech, ipv4hint and ipv6hint
// parameters (and without them in mandatory): hints would hand the client
// addresses that bypass the allowlist bookkeeping, and ECH would hide the
// real SNI from the proxy.
func stripSVCB(s *dns.SVCB) dns.SVCB {
	out := *s
	out.Value = nil
	for _, kv := range s.Value {
		switch v := kv.(type) {
		case *dns.SVCBECHConfig, *dns.SVCBIPv4Hint, *dns.SVCBIPv6Hint:
			continue
		case *dns.SVCBMandatory:
			m := &dns.SVCBMandatory{}
			for _, k := range v.Code {
				if k != dns.SVCB_ECHCONFIG && k != dns.SVCB_IPV4HINT && k != dns.SVCB_IPV6HINT {
					m.Code = append(m.Code, k)
				}
			}
			if len(m.Code) == 0 {
				continue
			}
			kv = m
		}
		out.Value = append(out.Value, kv) // shared; callers copy the RR
	}
	return out
}

// ownerIs reports whether the owner name (fully qualified, any case) is
// name (normalised, no trailing dot).
func ownerIs(owner, name string) bool {
	return len(owner) == len(name)+1 && owner[len(name)] == '.' && strings.EqualFold(owner[:len(name)], name)
}

// normalizeName returns the lower-case form of a presentation-format name
// without its trailing dot, or false if it is not a plain host name: every
// label 1-63 of [a-zA-Z0-9_-], at most 253 characters. Escapes (\000, \.)
// and wildcards are refused, so such names are never forwarded.
func normalizeName(s string) (string, bool) {
	if len(s) > 0 && s[len(s)-1] == '.' {
		s = s[:len(s)-1]
	}
	if len(s) == 0 || len(s) > 253 {
		return "", false
	}
	lower, label := true, 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
			label++
		case c >= 'A' && c <= 'Z':
			lower = false
			label++
		case c == '.':
			if label == 0 {
				return "", false
			}
			label = 0
		default:
			return "", false
		}
		if label > 63 {
			return "", false
		}
	}
	if label == 0 {
		return "", false
	}
	if !lower {
		s = strings.ToLower(s)
	}
	return s, true
}
