package dnsproxy

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/policy"
	"github.com/sluice-dev/sluice/pkg/testutil"
)

// upstream is a real miekg/dns server on 127.0.0.1 (UDP and TCP on one
// port) that logs every query it receives.
type upstream struct {
	addr string
	mu   sync.Mutex
	log  []string // "name type net", name as received
	// answer builds the reply; nil answers NXDOMAIN.
	answer func(q dns.Question, net string, m *dns.Msg)
}

func (u *upstream) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	network := "udp"
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		network = "tcp"
	}
	q := req.Question[0]
	u.mu.Lock()
	u.log = append(u.log, strings.ToLower(q.Name)+" "+dns.TypeToString[q.Qtype]+" "+network)
	ans := u.answer
	u.mu.Unlock()
	m := new(dns.Msg)
	m.SetReply(req)
	if ans == nil {
		m.Rcode = dns.RcodeNameError
	} else {
		ans(q, network, m)
	}
	if network == "udp" {
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
		m.Truncate(size)
	}
	w.WriteMsg(m)
}

func (u *upstream) queries() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.log...)
}

// saw reports whether any query for name (any type) arrived.
func (u *upstream) saw(name string) bool {
	for _, l := range u.queries() {
		if strings.HasPrefix(l, dns.Fqdn(name)+" ") {
			return true
		}
	}
	return false
}

// listenPair binds UDP and TCP on the same free loopback port.
func listenPair(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln
		}
		pc.Close()
	}
	t.Fatal("no free udp+tcp port pair on 127.0.0.1")
	return nil, nil
}

func startUpstream(t testing.TB, answer func(q dns.Question, net string, m *dns.Msg)) *upstream {
	t.Helper()
	pc, ln := listenPair(t)
	u := &upstream{addr: pc.LocalAddr().String(), answer: answer}
	serveOn(t, u, pc, ln)
	return u
}

func serveOn(t testing.TB, h dns.Handler, pc net.PacketConn, ln net.Listener) {
	t.Helper()
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		if s.PacketConn == nil && s.Listener == nil {
			continue
		}
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go s.ActivateAndServe()
		<-started
		t.Cleanup(func() { s.Shutdown() })
	}
}

// zone answers from a fixed set of records (owner names fully qualified,
// lower case): every record owned by the question name and of its type, and
// CNAME chains followed.
func zone(rrs ...string) func(q dns.Question, net string, m *dns.Msg) {
	var parsed []dns.RR
	for _, s := range rrs {
		rr, err := dns.NewRR(s)
		if err != nil {
			panic(err)
		}
		parsed = append(parsed, rr)
	}
	return func(q dns.Question, _ string, m *dns.Msg) {
		name := strings.ToLower(q.Name)
		found := false
		for hops := 0; hops < 20; hops++ {
			var cname *dns.CNAME
			for _, rr := range parsed {
				h := rr.Header()
				if h.Name != name {
					continue
				}
				found = true
				if h.Rrtype == q.Qtype {
					m.Answer = append(m.Answer, dns.Copy(rr))
				} else if c, ok := rr.(*dns.CNAME); ok {
					cname = c
				}
			}
			if cname == nil || q.Qtype == dns.TypeCNAME {
				break
			}
			m.Answer = append(m.Answer, dns.Copy(cname))
			name = cname.Target
		}
		if !found {
			m.Rcode = dns.RcodeNameError
		}
		if len(m.Answer) == 0 {
			soa, _ := dns.NewRR("test. 3600 IN SOA ns.test. host.test. 1 3600 600 86400 30")
			m.Ns = append(m.Ns, soa)
		}
	}
}

// testPolicy describes a policy in short form; build turns it into YAML
// and parses it with policy.Parse.
type testPolicy struct {
	entries []string
	audit   bool
	noV6    bool
}

// newTestPolicy takes "name" (allow), "!name" (deny) and "name>target"
// (remap) entries; names may be "*.suffix" patterns.
func newTestPolicy(entries ...string) testPolicy { return testPolicy{entries: entries} }

func (tp testPolicy) auditMode() testPolicy { tp.audit = true; return tp }
func (tp testPolicy) noIPv6() testPolicy    { tp.noV6 = true; return tp }

func (tp testPolicy) yaml() string {
	var b strings.Builder
	b.WriteString("version: 1\n")
	if tp.audit {
		b.WriteString("mode: audit\n")
	}
	if tp.noV6 {
		b.WriteString("ipv6: false\n")
	}
	b.WriteString("rules:\n")
	for i, e := range tp.entries {
		fmt.Fprintf(&b, "  - name: r%d\n", i)
		switch {
		case strings.HasPrefix(e, "!"):
			fmt.Fprintf(&b, "    hosts: [%q]\n    action: deny\n", e[1:])
		case strings.Contains(e, ">"):
			host, tgt, _ := strings.Cut(e, ">")
			fmt.Fprintf(&b, "    hosts: [%q]\n    remap: %q\n", host, tgt)
		default:
			fmt.Fprintf(&b, "    hosts: [%q]\n", e)
		}
	}
	return b.String()
}

func (tp testPolicy) build(t testing.TB) *policy.Policy {
	t.Helper()
	p, err := policy.Parse("test.yaml", []byte(tp.yaml()))
	if err != nil {
		t.Fatalf("test policy:\n%s\n%v", tp.yaml(), err)
	}
	return p
}

// allowRec is a recording Allowlister.
type allowRec struct {
	mu      sync.Mutex
	entries map[netip.Addr]allowEntry
	calls   int
	revoked []netip.Addr
	fail    error
}

type allowEntry struct {
	until  time.Time
	direct bool
}

func (a *allowRec) Allow(addr netip.Addr, until time.Time, direct bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls++
	if a.fail != nil {
		return a.fail
	}
	if a.entries == nil {
		a.entries = map[netip.Addr]allowEntry{}
	}
	if old, ok := a.entries[addr]; !ok || until.After(old.until) {
		a.entries[addr] = allowEntry{until, direct}
	}
	return nil
}

func (a *allowRec) Revoke(addr netip.Addr) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.revoked = append(a.revoked, addr)
	delete(a.entries, addr)
	return nil
}

// allowedAt reports whether addr may be connected to at t.
func (a *allowRec) allowedAt(addr netip.Addr, t time.Time) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.entries[addr]
	return ok && t.Before(e.until)
}

// events records audit events in the shared test recorder.
type events struct{ *testutil.AuditRecorder }

func (e *events) all() []audit.Event { return e.Events() }

func (e *events) last(t *testing.T) audit.Event {
	t.Helper()
	all := e.all()
	if len(all) == 0 {
		t.Fatal("no audit event")
	}
	return all[len(all)-1]
}

// recorder is a dns.ResponseWriter that keeps the answer (coredns dnstest
// style).
type recorder struct {
	msg    *dns.Msg
	wire   int // length of the packed answer
	remote net.Addr
}

func (r *recorder) LocalAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
}
func (r *recorder) RemoteAddr() net.Addr {
	if r.remote != nil {
		return r.remote
	}
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}
func (r *recorder) WriteMsg(m *dns.Msg) error {
	// Round-trip through the wire format like a real server does.
	b, err := m.Pack()
	if err != nil {
		return err
	}
	r.wire = len(b)
	r.msg = new(dns.Msg)
	return r.msg.Unpack(b)
}
func (r *recorder) Write(b []byte) (int, error) {
	r.msg = new(dns.Msg)
	return len(b), r.msg.Unpack(b)
}
func (r *recorder) Close() error        { return nil }
func (r *recorder) TsigStatus() error   { return nil }
func (r *recorder) TsigTimersOnly(bool) {}
func (r *recorder) Hijack()             {}

// env is a resolver, one sandbox and its fakes.
type env struct {
	r     *Resolver
	sb    *Sandbox
	h     dns.Handler
	pol   atomic.Pointer[policy.Policy]
	allow *allowRec
	ev    *events
}

func newEnv(t testing.TB, cfg Config, tp testPolicy) *env {
	t.Helper()
	r, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{r: r, allow: &allowRec{}, ev: &events{testutil.NewAuditRecorder()}}
	e.pol.Store(tp.build(t))
	e.sb = &Sandbox{Name: "sb1", ID: 42, Allow: e.allow, Audit: e.ev, Policy: e.pol.Load}
	e.h, err = r.Handler(e.sb)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// query asks the handler directly (no sockets).
func (e *env) query(t testing.TB, name string, qtype uint16) *dns.Msg {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), qtype)
	rec := &recorder{}
	e.h.ServeDNS(rec, q)
	if rec.msg == nil {
		t.Fatalf("%s %s: no answer", name, dns.TypeToString[qtype])
	}
	if rec.msg.Id != q.Id {
		t.Fatalf("answer id %d, want %d", rec.msg.Id, q.Id)
	}
	return rec.msg
}

func addrsOf(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		switch v := rr.(type) {
		case *dns.A:
			out = append(out, v.A.String())
		case *dns.AAAA:
			out = append(out, v.AAAA.String())
		}
	}
	return out
}

var errBoom = errors.New("map full")

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
