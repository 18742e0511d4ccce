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
	// sharedSlow bounds the sandbox's queries that ServeShared answers
	// off its reader at once (maxSlowUDP, as Serve does per listener).
	sharedSlow chan struct{}
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
