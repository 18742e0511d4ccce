package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/fence"
	"github.com/sluice-dev/sluice/pkg/policy"
)

// Protocols seen by the peek.
const (
	protoTLS  = "tls"
	protoHTTP = "http"
	protoTCP  = "tcp"
)

// connInfo is what one client connection is known by, for the decision and
// for the events.
type connInfo struct {
	s     *server
	orig  Origin
	exe   string // executable of orig.PID at accept ("" if unknown)
	proto string
	sni   string // from the ClientHello
	host  string // the name the connection was decided on ("" if none)
	// hostPort is host joined with the destination port, set before the
	// connection is handed to the HTTP server (the usual upstream pool key).
	hostPort string
	// verdict and rule of the connection decision. In audit mode a denied
	// connection is intercepted (or spliced) with wouldDeny set.
	verdict   policy.Verdict
	rule      *policy.Rule
	viaCIDR   bool // admitted by a CIDR rule, not by a name bound to the address
	wouldDeny bool
	denied    string // intercepted only to answer 403: the reason
	reason    string
	start     time.Time
	up, down  atomic.Int64
	alpnH2    bool

	// own is the upstream pool of a connection admitted by a CIDR rule: its
	// requests never share upstream connections with other client
	// connections (a pooled connection to the same name elsewhere must not
	// receive this rule's credentials).
	ownOnce sync.Once
	own     *http.Transport
}

func (ci *connInfo) ownTransport(p *Proxy, h2 bool) *http.Transport {
	ci.ownOnce.Do(func() { ci.own = p.newTransport(h2, 4) })
	return ci.own
}

func (ci *connInfo) closeOwn() {
	ci.ownOnce.Do(func() {})
	if ci.own != nil {
		ci.own.CloseIdleConnections()
	}
}

func (ci *connInfo) port() uint16 { return ci.orig.Dst.Port() }

// handle runs one tracked client connection to completion. given is its
// original destination when the caller looked it up; nil: handle asks
// s.sb.Orig.
func (s *server) handle(ctx context.Context, c net.Conn, given *Origin) {
	ci := &connInfo{s: s, start: time.Now(), proto: protoTCP}
	handedOff := false
	defer func() {
		if !handedOff {
			c.Close()
			s.untrack(c)
			s.connEvent(ci)
		}
	}()

	var orig Origin
	if given != nil {
		orig = *given
	} else {
		client, err := remoteAddrPort(c)
		if err != nil {
			ci.reason = "unparsable client address"
			ci.verdict = policy.VerdictDeny
			return
		}
		orig, err = s.sb.Orig.OriginalDst(netip.AddrPortFrom(client.Addr().Unmap(), client.Port()))
		if err != nil {
			ci.verdict = policy.VerdictDeny
			ci.reason = "original destination unknown"
			s.log.Debug("original destination lookup failed", "client", client, "err", err)
			return
		}
	}
	orig.Dst = netip.AddrPortFrom(orig.Dst.Addr().Unmap(), orig.Dst.Port())
	ci.orig = orig
	if orig.Dst.Port() == dnsPort {
		handedOff = s.serveDNS(ctx, c, ci)
		return
	}
	ci.exe = s.exeOf(orig.PID)

	buf, err := s.peek(c, ci)
	if err != nil {
		ci.verdict = policy.VerdictDeny
		ci.reason = err.Error()
		return
	}
	pol := s.sb.Policy()
	if pol == nil {
		ci.verdict = policy.VerdictDeny
		ci.reason = "no policy"
		if ci.proto != protoTCP && ci.host != "" {
			ci.denied = ci.reason
			handedOff = s.intercept(ctx, c, buf, ci)
		}
		return
	}
	s.decide(pol, ci)
	if s.log.Enabled(ctx, slog.LevelDebug) { // the arguments allocate even when disabled
		s.log.Debug("connection", "dst", orig.Dst, "proto", ci.proto, "host", ci.host, "verdict", ci.verdict, "reason", ci.reason)
	}

	switch ci.verdict {
	case policy.VerdictSplice:
		s.splice(ctx, c, buf, ci)
	case policy.VerdictIntercept:
		handedOff = s.intercept(ctx, c, buf, ci)
	default:
		// Answer at HTTP level where the sandbox can read why.
		if ci.proto != protoTCP && ci.host != "" {
			ci.denied = ci.reason
			handedOff = s.intercept(ctx, c, buf, ci)
		}
	}
}

// remoteAddrPort is c's peer address, without formatting and parsing it
// for a TCP connection.
func remoteAddrPort(c net.Conn) (netip.AddrPort, error) {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		if ap := ta.AddrPort(); ap.IsValid() {
			return ap, nil
		}
	}
	return netip.ParseAddrPort(c.RemoteAddr().String())
}

// peek reads the ClientHello or the plain HTTP request head and fills
// ci.proto, ci.sni, ci.host. The returned bytes must be replayed.
func (s *server) peek(c net.Conn, ci *connInfo) ([]byte, error) {
	cfg := &s.p.cfg
	buf := make([]byte, 0, 2048)
	deadline := time.Now().Add(cfg.PeekTimeout)
	// A server-speaks-first protocol sends nothing: decide on the address.
	c.SetReadDeadline(time.Now().Add(cfg.FirstByteTimeout))
	defer c.SetReadDeadline(time.Time{})
	first := true
	for {
		if len(buf) == cap(buf) {
			if cap(buf) >= maxPeekLen {
				return nil, errHelloTooBig
			}
			buf = slices.Grow(buf, min(cap(buf), maxPeekLen-cap(buf)))
		}
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			if first && len(buf) == 0 && errors.Is(err, os.ErrDeadlineExceeded) {
				if !s.needsClientFirst(ci) {
					return buf, nil // raw TCP, server first (or denied anyway)
				}
				// Only a client-first protocol (TLS, HTTP) can be
				// allowed here: a slow client gets the whole PeekTimeout.
				first = false
				c.SetReadDeadline(deadline)
				continue
			}
			if len(buf) == 0 {
				return nil, errors.New("client sent nothing")
			}
			if !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrDeadlineExceeded) {
				return nil, err
			}
			// EOF or timeout with partial data: decide on what we have.
			return buf, s.finishPeek(buf, ci, true)
		}
		if first && n > 0 {
			first = false
			c.SetReadDeadline(deadline)
		}
		if err := s.finishPeek(buf, ci, false); !errors.Is(err, errNeedMore) {
			return buf, err
		}
	}
}

// needsClientFirst reports whether the rule that decides the connection's
// address needs HTTP-level handling, so that only a client-first protocol
// (TLS, HTTP) can be allowed there. Silence is then not taken for a
// server-speaks-first protocol after FirstByteTimeout: a slow client gets
// the whole PeekTimeout. Addresses that are spliced, or denied whatever the
// client sends, are decided after FirstByteTimeout as before.
func (s *server) needsClientFirst(ci *connInfo) bool {
	pol := s.sb.Policy()
	if pol == nil {
		return false
	}
	probe := &connInfo{s: s, orig: ci.orig, exe: ci.exe, proto: protoTCP, start: ci.start}
	s.decide(pol, probe)
	if pol.Mode == policy.ModeAudit {
		// Audit mode records names for `sluice policy suggest`: a would-be
		// refusal waits for a slow ClientHello or request head too, or a
		// loaded machine turns a TLS client into a raw splice known only
		// by its address. A server-first protocol to such an address then
		// waits PeekTimeout before it is spliced.
		return probe.wouldDeny
	}
	return probe.verdict == policy.VerdictDeny && probe.rule != nil && probe.rule.NeedsIntercept()
}

// finishPeek classifies buf. It returns errNeedMore when more bytes are
// needed (and final is false).
func (s *server) finishPeek(buf []byte, ci *connInfo, final bool) error {
	if buf[0] == 0x16 {
		ci.proto = protoTLS
		sni, h2, err := parseClientHello(buf)
		if errors.Is(err, errNeedMore) && final {
			return errors.New("incomplete TLS ClientHello")
		}
		if errors.Is(err, errNotHello) {
			ci.proto = protoTCP
			return nil
		}
		if err != nil {
			return err
		}
		ci.alpnH2 = h2
		if len(sni) > 0 {
			h, ok := hostOnly(string(sni))
			if !ok {
				return errBadSNI
			}
			ci.sni, ci.host = h, h
		}
		return nil
	}
	head, err := parseHTTPHead(buf)
	switch {
	case errors.Is(err, errNeedMore):
		if final {
			ci.proto = protoTCP
			return nil
		}
		return err
	case errors.Is(err, errNotHTTP):
		ci.proto = protoTCP
		return nil
	case err != nil:
		ci.proto = protoHTTP
		return err
	}
	ci.proto = protoHTTP
	ci.host = head.host
	return nil
}

// decide sets ci.verdict, ci.rule, ci.host from the policy, the peeked name
// and the names the sandbox resolved to the original address.
//
// With a name from SNI/Host: the name's rule decides, provided the original
// address is bound to that name, or to another name of the same rule (shared
// CDN addresses), or to the rule's remap target. Otherwise the address must
// be admitted by a CIDR rule, which then decides (its rule, never the name's
// headers). Without a name: the first bound name that is allowed decides,
// then the CIDR rules. In audit mode a denial becomes would_deny and the
// connection is intercepted (TLS with a name, plain HTTP) or spliced.
func (s *server) decide(pol *policy.Policy, ci *connInfo) {
	pol = pol.ForProcess(ci.exe)
	addr, port := ci.orig.Dst.Addr(), ci.orig.Dst.Port()
	var names []string
	if s.sb.Names != nil {
		names = s.sb.Names.Names(addr)
	}
	var m policy.ConnMatch
	switch {
	case ci.host != "":
		m = pol.MatchConn(ci.host, port)
		if m.Verdict != policy.VerdictDeny && !boundTo(pol, m, ci.host, names, addr, port) {
			if am := pol.MatchAddr(addr, port); am.Verdict != policy.VerdictDeny {
				m = am
				ci.viaCIDR = true
			} else {
				m = policy.ConnMatch{Verdict: policy.VerdictDeny, Rule: m.Rule}
				ci.reason = "host " + ci.host + " is not bound to " + addr.String() + " for this sandbox"
			}
		} else if m.Verdict == policy.VerdictDeny && m.Rule == nil {
			if am := pol.MatchAddr(addr, port); am.Verdict != policy.VerdictDeny {
				m = am
				ci.viaCIDR = true
			}
		}
		if m.Verdict == policy.VerdictDeny && ci.reason == "" {
			if m.Rule != nil {
				ci.reason = "rule " + m.Rule.Name + " denies host " + ci.host
			} else {
				ci.reason = "no rule allows host " + ci.host + " port " + itoa(port)
			}
		}
	default:
		// No name from the client. If any name bound to the address needs
		// HTTP-level handling, that one decides (a client must not escape a
		// rule's paths or credentials by omitting SNI on a shared address);
		// otherwise the first allowed name.
		m = policy.ConnMatch{Verdict: policy.VerdictDeny}
		for _, n := range names {
			nm := pol.MatchConn(n, port)
			if nm.Verdict == policy.VerdictIntercept {
				m, ci.host = nm, n
				break
			}
			if nm.Verdict == policy.VerdictSplice && m.Verdict == policy.VerdictDeny {
				m, ci.host = nm, n
			}
		}
		if m.Verdict == policy.VerdictDeny {
			if am := pol.MatchAddr(addr, port); am.Verdict != policy.VerdictDeny {
				m = am
				ci.viaCIDR = true
			} else {
				ci.reason = "no rule allows " + ci.orig.Dst.String()
			}
		}
	}
	ci.verdict, ci.rule = m.Verdict, m.Rule
	if m.Verdict == policy.VerdictDeny && m.Reason != "" {
		ci.reason = ci.processReason(m.Reason)
	}
	if ci.verdict == policy.VerdictIntercept && ci.proto == protoTCP {
		ci.verdict = policy.VerdictDeny
		ci.reason = "rule " + ruleName(ci.rule) + " needs HTTP-level handling but the connection is neither TLS nor HTTP"
	}
	if ci.verdict == policy.VerdictIntercept && ci.proto == protoTLS && ci.host == "" {
		ci.verdict = policy.VerdictDeny
		ci.reason = "TLS without a server name to a rule that needs interception"
	}
	if ci.verdict == policy.VerdictDeny && pol.Mode == policy.ModeAudit {
		ci.wouldDeny = true
		if ci.proto != protoTCP && ci.host != "" {
			ci.verdict = policy.VerdictIntercept
		} else {
			ci.verdict = policy.VerdictSplice
		}
	}
}

// boundTo reports whether the sandbox's resolver bound host (or a name of the
// same rule, or the rule's remap target) to addr, or host is addr itself.
func boundTo(pol *policy.Policy, m policy.ConnMatch, host string, names []string, addr netip.Addr, port uint16) bool {
	if a, err := netip.ParseAddr(host); err == nil {
		return a.Unmap() == addr
	}
	for _, n := range names {
		if n == host {
			return true
		}
	}
	if m.Rule == nil {
		return false
	}
	for _, n := range names {
		if m.Rule.Remap != nil && n == m.Rule.Remap.Host {
			return true
		}
		if nm := pol.MatchConn(n, port); nm.Verdict != policy.VerdictDeny && nm.Rule == m.Rule {
			return true
		}
	}
	return false
}

func ruleName(r *policy.Rule) string {
	if r == nil {
		return ""
	}
	return r.Name
}

func (s *server) connEvent(ci *connInfo) {
	ev := audit.Event{
		Kind:       audit.KindConn,
		CgroupID:   ci.orig.CgroupID,
		PID:        ci.orig.PID,
		Comm:       ci.orig.Comm,
		Exe:        ci.exe,
		Rule:       ruleName(ci.rule),
		Reason:     ci.reason,
		Proto:      ci.proto,
		SNI:        ci.sni,
		BytesUp:    ci.up.Load(),
		BytesDown:  ci.down.Load(),
		DurationMS: time.Since(ci.start).Milliseconds(),
	}
	if ci.orig.Dst.IsValid() {
		ev.Dst = ci.orig.Dst.String()
	}
	if ci.sni == "" {
		ev.Host = ci.host
	}
	switch {
	case ci.wouldDeny:
		ev.Decision = audit.DecisionWouldDeny
	case ci.verdict == policy.VerdictSplice && ci.denied == "":
		ev.Decision = audit.DecisionSplice
	case ci.verdict == policy.VerdictIntercept && ci.denied == "":
		ev.Decision = audit.DecisionIntercept
	default:
		ev.Decision = audit.DecisionDeny
	}
	s.emit(ev)
}

// splice copies bytes between the client and the original destination
// (copyConn: read and write through a pooled buffer, not splice(2), see
// copy.go), unless the kernel splices them (kernelSplice); each direction is
// half-closed when its reader sees EOF.
func (s *server) splice(ctx context.Context, c net.Conn, peeked []byte, ci *connInfo) {
	if !s.sb.Fence.Acquire(fence.UpstreamConnections) {
		ci.reason = "fence: upstream_connections"
		ci.denied = ci.reason
		s.sb.Fence.Refuse(fence.UpstreamConnections, ci.orig.Dst, false)
		return
	}
	defer s.sb.Fence.Release(fence.UpstreamConnections)
	dctx, cancel := context.WithTimeout(ctx, s.p.cfg.DialTimeout)
	up, err := s.p.cfg.Dial(dctx, "tcp", ci.orig.Dst.String())
	cancel()
	if err != nil {
		ci.reason = "upstream dial failed: " + err.Error()
		return
	}
	if !s.track(up) {
		up.Close()
		return
	}
	defer func() {
		up.Close()
		s.untrack(up)
	}()
	if len(peeked) > 0 {
		n, err := up.Write(peeked)
		ci.up.Add(int64(n))
		if err != nil {
			return
		}
	}
	if s.kernelSplice(c, up, len(peeked), ci) {
		return
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		n, err := copyConn(up, c)
		ci.up.Add(n)
		if err != nil {
			// reset or closed: unblock the other direction
			c.Close()
			up.Close()
			return
		}
		closeWrite(up)
	}()
	n, err := copyConn(c, up)
	ci.down.Add(n)
	if err != nil {
		c.Close()
		up.Close()
	} else {
		closeWrite(c)
		// The upstream is done; a client that neither sends nor closes must
		// not pin the connection forever.
		c.SetReadDeadline(time.Now().Add(s.p.cfg.IdleTimeout))
	}
	wg.Wait()
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		return
	}
	c.Close()
}
