package dnsproxy

import (
	"net/netip"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/policy"
)

// answering is one question being answered: what each step of answer decides
// and the next ones read.
type answering struct {
	sb  *Sandbox
	req *dns.Msg
	tcp bool
	now time.Time
	rp  *reply
	q   dns.Question

	name      string // the name asked, normalized
	pol       *policy.Policy
	match     policy.NameMatch
	auditMode bool
	decision  string
	// passthrough: a type no rule answers, let through in audit mode.
	passthrough bool
	// target is the name looked up: name, or the remap target (remap).
	target, remap string

	e   *entry // the upstream answer for target
	age uint32 // e's age in seconds
}

// answer computes the response to req for sb, and its audit event. A nil
// rp.msg means no response is sent. Each step returns the finished reply
// when it ends the answer, nil when the next one continues.
func (r *Resolver) answer(sb *Sandbox, req *dns.Msg, tcp bool) *reply {
	// Direct calls, not a loop over the steps: qy then stays on the
	// stack (this is the path of every query).
	qy := answering{sb: sb, req: req, tcp: tcp, now: r.now()}
	qy.rp = newReply(sb, tcp, qy.now)
	if req.Response {
		qy.rp.ev.Decision, qy.rp.ev.Reason = audit.DecisionDeny, reasonNotQuery
		return qy.rp
	}
	if rp := r.checkHeader(&qy); rp != nil {
		return rp
	}
	if rp := checkPolicy(&qy); rp != nil {
		return rp
	}
	if rp := checkRemap(&qy); rp != nil {
		return rp
	}
	if rp := r.lookUp(&qy); rp != nil {
		return rp
	}
	if rp := r.answerPlain(&qy); rp != nil {
		return rp
	}
	chain, final, rp := followChain(&qy)
	if rp != nil {
		return rp
	}
	return r.answerAddresses(&qy, chain, final)
}

// newReply starts the reply and its audit event.
func newReply(sb *Sandbox, tcp bool, now time.Time) *reply {
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
	return rp
}

// checkHeader starts the response and refuses what is not one standard
// query of class IN for a valid name (EDNS version, opcode, question
// count, class, name).
func (r *Resolver) checkHeader(qy *answering) *reply {
	req, rp := qy.req, qy.rp
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
		if !qy.tcp {
			rp.size = max(int(opt.UDPSize()), dns.MinMsgSize)
		}
	}
	if req.Opcode != dns.OpcodeQuery {
		return rp.finish(dns.RcodeNotImplemented, audit.DecisionDeny, reasonOpcode)
	}
	if len(req.Question) != 1 {
		return rp.finish(dns.RcodeFormatError, audit.DecisionDeny, reasonQuestions)
	}
	qy.q = req.Question[0]
	if qy.q.Qclass != dns.ClassINET {
		return rp.finish(dns.RcodeRefused, audit.DecisionDeny, reasonClass)
	}
	name, ok := normalizeName(qy.q.Name)
	if !ok {
		return rp.finish(dns.RcodeNameError, audit.DecisionDeny, reasonInvalidName)
	}
	qy.name = name
	rp.ev.QName = name
	return nil
}

// checkPolicy decides the name and the type by the sandbox's policy: a
// refusal ends the answer, except in audit mode, where it becomes a
// would_deny.
func checkPolicy(qy *answering) *reply {
	rp := qy.rp
	m := qy.sb.Policy()
	rp.pol = m
	if m == nil {
		return rp.finish(dns.RcodeNameError, audit.DecisionDeny, reasonNoPolicy)
	}
	qy.pol = m
	qy.auditMode = m.Mode == policy.ModeAudit
	qy.match = m.MatchName(qy.name)
	if qy.match.Rule != nil {
		rp.ev.Rule = qy.match.Rule.Name
	}
	qy.decision = audit.DecisionAllow
	if !qy.match.Allowed {
		if !qy.auditMode {
			return rp.finish(dns.RcodeNameError, audit.DecisionDeny, reasonNotAllowed)
		}
		qy.decision, rp.ev.Reason = audit.DecisionWouldDeny, reasonNotAllowed
	}
	switch qy.q.Qtype {
	case dns.TypeA, dns.TypeCNAME, dns.TypeHTTPS, dns.TypeSVCB:
	case dns.TypeAAAA:
		if !m.IPv6 {
			return rp.finish(dns.RcodeSuccess, qy.decision, reasonIPv6Off)
		}
	default:
		if !qy.auditMode {
			return rp.finish(dns.RcodeSuccess, audit.DecisionDeny, reasonType)
		}
		qy.decision, rp.ev.Reason, qy.passthrough = audit.DecisionWouldDeny, reasonType, true
	}
	return nil
}

// checkRemap sets the name to look up: the rule's remap target (a mirror)
// or the name asked.
func checkRemap(qy *answering) *reply {
	qy.target = qy.name
	if !qy.match.Allowed || qy.match.Remap == nil || qy.match.Remap.Host == "" {
		return nil
	}
	t, ok := normalizeName(qy.match.Remap.Host)
	if !ok {
		return qy.rp.finish(dns.RcodeServerFailure, audit.DecisionError, "invalid remap target")
	}
	qy.target, qy.remap = t, t
	if qy.q.Qtype != dns.TypeA && qy.q.Qtype != dns.TypeAAAA {
		// The mirror's CNAME and HTTPS records describe the mirror,
		// not the name asked: answer NODATA so clients use A/AAAA.
		return qy.rp.finish(dns.RcodeSuccess, qy.decision, "")
	}
	return nil
}

// lookUp asks the cache or the upstreams for the target.
func (r *Resolver) lookUp(qy *answering) *reply {
	e, err := r.lookup(qy.target, qy.q.Qtype, qy.now)
	if err != nil {
		if r.logLimit(qy.now) {
			r.log.Warn("upstream resolution failed (repeats within 10s not logged; see audit events)",
				"sandbox", qy.sb.Name, "qname", qy.target, "qtype", qy.rp.ev.QType, "err", err)
		}
		return qy.rp.finish(dns.RcodeServerFailure, audit.DecisionError, reasonUpstream)
	}
	qy.e, qy.age = e, e.age(qy.now)
	qy.rp.expires = e.expires
	return nil
}

// answerPlain answers what binds no address: a passed-through type, a
// name error, and CNAME queries.
func (r *Resolver) answerPlain(qy *answering) *reply {
	e, age, resp, rp := qy.e, qy.age, qy.rp.msg, qy.rp
	switch {
	case qy.passthrough:
		for _, rr := range e.answer {
			resp.Answer = append(resp.Answer, withTTL(rr, rr.Header().Ttl-min(age, rr.Header().Ttl)))
		}
		return rp.finish(e.rcode, qy.decision, "")
	case e.rcode == dns.RcodeNameError:
		if qy.remap == "" {
			r.addSOA(resp, e, age)
		}
		return rp.finish(dns.RcodeNameError, qy.decision, "")
	case qy.q.Qtype == dns.TypeCNAME:
		for _, rr := range e.answer {
			if c, ok := rr.(*dns.CNAME); ok && ownerIs(c.Hdr.Name, qy.target) {
				rp.ev.Answers = append(rp.ev.Answers, c.Target)
				resp.Answer = append(resp.Answer, withTTL(c, c.Hdr.Ttl-min(age, c.Hdr.Ttl)))
			}
		}
		if len(resp.Answer) == 0 {
			r.addSOA(resp, e, age)
		}
		return rp.finish(dns.RcodeSuccess, qy.decision, "")
	}
	return nil
}

// finalName is the end of the CNAME chain: its name and the smallest TTL
// on the way.
type finalName struct {
	name string
	ttl  uint32
}

// followChain follows the CNAME chain from the target to the final name.
func followChain(qy *answering) ([]*dns.CNAME, finalName, *reply) {
	var chain []*dns.CNAME
	f := finalName{name: qy.target, ttl: ^uint32(0)}
	for {
		var next *dns.CNAME
		for _, rr := range qy.e.answer {
			if c, ok := rr.(*dns.CNAME); ok && ownerIs(c.Hdr.Name, f.name) {
				next = c
				break
			}
		}
		if next == nil {
			return chain, f, nil
		}
		if len(chain) == maxChain {
			return nil, f, qy.rp.finish(dns.RcodeServerFailure, audit.DecisionError, reasonChainLong)
		}
		tname, ok := normalizeName(next.Target)
		if !ok {
			return nil, f, qy.rp.finish(dns.RcodeNameError, audit.DecisionDeny, reasonChainInvalid)
		}
		if rp := qy.checkAlias(tname); rp != nil {
			return nil, f, rp
		}
		chain = append(chain, next)
		f.ttl = min(f.ttl, next.Hdr.Ttl)
		f.name = tname
	}
}

// checkAlias decides a name in the CNAME chain: one that a rule explicitly
// denies ends the answer; a name no rule mentions is accepted as an alias
// of the allowed name (CDNs), since the sandbox asked for the allowed name
// and the addresses are bound to it. A remapped answer is the mirror's.
func (qy *answering) checkAlias(tname string) *reply {
	if qy.remap != "" {
		return nil
	}
	cm := qy.pol.MatchName(tname)
	if cm.Allowed || cm.Rule == nil {
		return nil
	}
	qy.rp.ev.Rule = cm.Rule.Name
	if !qy.auditMode {
		return qy.rp.finish(dns.RcodeNameError, audit.DecisionDeny, reasonChainDenied+tname)
	}
	qy.decision, qy.rp.ev.Reason = audit.DecisionWouldDeny, reasonChainDenied+tname
	return nil
}

// answerAddresses answers with the final name's records: it binds and
// allows their addresses, then writes the chain and the records.
func (r *Resolver) answerAddresses(qy *answering, chain []*dns.CNAME, f finalName) *reply {
	resp, rp := qy.rp.msg, qy.rp
	finals, addrs, ttl := r.finalRecords(qy, f)
	if len(finals) == 0 {
		if qy.remap == "" {
			for _, c := range chain {
				resp.Answer = append(resp.Answer, withTTL(c, c.Hdr.Ttl-min(qy.age, c.Hdr.Ttl)))
			}
			r.addSOA(resp, qy.e, qy.age)
		}
		return rp.finish(dns.RcodeSuccess, qy.decision, "")
	}
	ttl -= min(qy.age, ttl)
	if len(addrs) > 0 {
		until := qy.now.Add(max(time.Duration(ttl)*time.Second, r.cfg.MinTTL) + r.cfg.Grace)
		direct := qy.match.Direct && qy.remap == ""
		if err := r.allow(qy.sb, qy.name, qy.remap, addrs, until, direct); err != nil {
			r.log.Error("allowlist write failed", "sandbox", qy.sb.Name, "qname", qy.name, "err", err)
			return rp.finish(dns.RcodeServerFailure, audit.DecisionError, reasonAllowlist)
		}
		for _, a := range addrs {
			rp.ev.Answers = append(rp.ev.Answers, a.String())
		}
		rp.allowedUntil, rp.minTTL = until, ttl
	}
	writeAnswer(qy, chain, finals, ttl)
	return rp.finish(dns.RcodeSuccess, qy.decision, "")
}

// finalRecords picks the records of the final name of the asked type,
// with the addresses sluice may bind (at most the bindings per name), and
// returns them with the smallest TTL of the chain and the records.
func (r *Resolver) finalRecords(qy *answering, f finalName) ([]dns.RR, []netip.Addr, uint32) {
	var finals []dns.RR
	var addrs []netip.Addr
	ttl := f.ttl
	dropped := false
	usable := func(ip []byte) (netip.Addr, bool) {
		a, ok := netip.AddrFromSlice(ip)
		if !ok || !r.usable(a.Unmap(), qy.remap != "") {
			dropped = true
			return a, false
		}
		return a.Unmap(), true
	}
	for _, rr := range qy.e.answer {
		h := rr.Header()
		if h.Rrtype != qy.q.Qtype || !ownerIs(h.Name, f.name) {
			continue
		}
		if len(addrs) == qy.sb.Bindings.perName {
			// More addresses than the name may hold: the excess would be
			// evicted (and revoked) by this very answer, so leave it out.
			break
		}
		switch v := rr.(type) {
		case *dns.A:
			a, ok := usable(v.A)
			if !ok {
				continue
			}
			addrs = append(addrs, a)
		case *dns.AAAA:
			a, ok := usable(v.AAAA)
			if !ok {
				continue
			}
			addrs = append(addrs, a)
		case *dns.HTTPS:
			rr = &dns.HTTPS{SVCB: stripSVCB(&v.SVCB)}
			qy.rp.ev.Answers = append(qy.rp.ev.Answers, rr.(*dns.HTTPS).Target)
		case *dns.SVCB:
			st := stripSVCB(v)
			rr = &st
			qy.rp.ev.Answers = append(qy.rp.ev.Answers, v.Target)
		}
		ttl = min(ttl, h.Ttl)
		finals = append(finals, rr)
	}
	if dropped && qy.rp.ev.Reason == "" {
		qy.rp.ev.Reason = reasonDropped
	}
	return finals, addrs, ttl
}

// writeAnswer writes the chain and the final records under the name as
// the client spelled it (0x20); a remapped answer is flattened, so the
// client accepts the mirror's addresses as the registry's.
func writeAnswer(qy *answering, chain []*dns.CNAME, finals []dns.RR, ttl uint32) {
	resp, age, qname := qy.rp.msg, qy.age, qy.q.Name
	if qy.remap != "" {
		for _, rr := range finals {
			resp.Answer = append(resp.Answer, renamed(rr, qname, ttl))
		}
		return
	}
	for i, c := range chain {
		rr := withTTL(c, c.Hdr.Ttl-min(age, c.Hdr.Ttl))
		if i == 0 {
			rr.Header().Name = qname
		}
		resp.Answer = append(resp.Answer, rr)
	}
	for _, rr := range finals {
		h := rr.Header()
		out := withTTL(rr, h.Ttl-min(age, h.Ttl))
		if len(chain) == 0 {
			out.Header().Name = qname
		}
		resp.Answer = append(resp.Answer, out)
	}
}
