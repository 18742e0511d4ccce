package dnsproxy

import (
	"context"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// fuzzZone is what the fuzz upstream serves: CNAME chains (one through a
// denied name), HTTPS with hints and ECH, rebinding addresses.
var fuzzZone = zone(
	"allowed.test. 300 IN A 192.0.2.10",
	"allowed.test. 300 IN AAAA 2001:db8::10",
	"www.allowed.test. 300 IN CNAME edge.cdn.test.",
	"edge.cdn.test. 60 IN A 192.0.2.21",
	"bad.allowed.test. 300 IN CNAME x.evil.test.",
	"x.evil.test. 300 IN A 192.0.2.66",
	"lo.allowed.test. 300 IN A 127.0.0.1",
	`allowed.test. 300 IN HTTPS 1 . alpn=h2 ipv4hint=192.0.2.1 ech="AEX+DQBBpQAgACDd"`,
	"mirror.test. 300 IN A 192.0.2.77",
)

// fuzzNames are the names the fuzz policy lets reach the upstream.
func fuzzUpstreamOK(line string) bool {
	name, _, _ := strings.Cut(line, " ")
	return name == "allowed.test." || strings.HasSuffix(name, ".allowed.test.") || name == "mirror.test."
}

func fuzzSeeds() [][]byte {
	var out [][]byte
	add := func(name string, qtype uint16, mod func(*dns.Msg)) {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		if mod != nil {
			mod(m)
		}
		b, err := m.Pack()
		if err != nil {
			panic(err)
		}
		out = append(out, b)
	}
	add("allowed.test.", dns.TypeA, nil)
	add("ALLOWED.test.", dns.TypeAAAA, func(m *dns.Msg) { m.SetEdns0(4096, true) })
	add("www.allowed.test.", dns.TypeA, nil)
	add("bad.allowed.test.", dns.TypeA, nil)
	add("lo.allowed.test.", dns.TypeA, nil)
	add("allowed.test.", dns.TypeHTTPS, nil)
	add("allowed.test.", dns.TypeTXT, nil)
	add("allowed.test.", dns.TypeANY, nil)
	add("registry.npmjs.org.", dns.TypeA, nil)
	add("6578666974.attacker.test.", dns.TypeTXT, nil)
	add("a\\000b.allowed.test.", dns.TypeA, nil)
	add("allowed.test.", dns.TypeA, func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) })
	add("allowed.test.", dns.TypeA, func(m *dns.Msg) { m.Opcode = dns.OpcodeUpdate })
	add("allowed.test.", dns.TypeA, func(m *dns.Msg) { m.SetEdns0(512, false); m.IsEdns0().SetVersion(3) })
	add("allowed.test.", dns.TypeA, func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS })
	return out
}

func newFuzzEnv(t testing.TB) (*env, *upstream) {
	up := startUpstream(t, fuzzZone)
	e := newEnv(t, Config{Upstreams: []string{up.addr}, Timeout: 500 * time.Millisecond},
		newTestPolicy("allowed.test", "*.allowed.test", "!*.evil.test", "registry.npmjs.org>mirror.test"))
	return e, up
}

// FuzzServeDNS feeds raw wire messages to the handler: it must not panic,
// must answer with the query's id, must never forward a name the policy
// does not allow, and may only hand out addresses it allowlisted.
func FuzzServeDNS(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	e, up := newFuzzEnv(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		req := new(dns.Msg)
		if err := req.Unpack(data); err != nil {
			// The server drops or FORMERRs these before any handler runs.
			return
		}
		rec := &recorder{}
		e.h.ServeDNS(rec, req)
		if rec.msg != nil {
			if rec.msg.Id != req.Id {
				t.Fatalf("answer id %d, want %d", rec.msg.Id, req.Id)
			}
			for _, rr := range rec.msg.Answer {
				var a netip.Addr
				switch v := rr.(type) {
				case *dns.A:
					a, _ = netip.AddrFromSlice(v.A)
				case *dns.AAAA:
					a, _ = netip.AddrFromSlice(v.AAAA)
				case *dns.HTTPS:
					if s := v.String(); strings.Contains(s, "ech=") || strings.Contains(s, "hint=") {
						t.Fatalf("unstripped %s", s)
					}
					continue
				default:
					continue
				}
				if !e.allow.allowedAt(a.Unmap(), time.Now()) {
					t.Fatalf("answered %s without allowlisting it", a)
				}
			}
		}
		for _, l := range up.queries() {
			if !fuzzUpstreamOK(l) {
				t.Fatalf("upstream saw %q", l)
			}
		}
	})
}

// TestNoGoroutineLeak serves the fuzz seeds over real sockets, stops the
// server and checks every goroutine it started is gone.
func TestNoGoroutineLeak(t *testing.T) {
	e, _ := newFuzzEnv(t)
	before := runtime.NumGoroutine()
	pc, ln := listenPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.r.Serve(ctx, e.sb, pc, ln) }()
	for _, netw := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: netw, Timeout: time.Second}
		for _, s := range fuzzSeeds() {
			m := new(dns.Msg)
			if err := m.Unpack(s); err != nil {
				t.Fatal(err)
			}
			c.Exchange(m, pc.LocalAddr().String()) // some get no answer
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Fatalf("%d goroutines after Serve returned, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

// FuzzParseQuery checks the fast path's wire reader against miekg/dns: a
// query it accepts must unpack to the same single question, and neither it
// nor ttlOffsets may panic on any input.
func FuzzParseQuery(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ttlOffsets(data)
		q, ok := parseQuery(data, nil)
		if !ok {
			return
		}
		m := new(dns.Msg)
		if err := m.Unpack(data); err != nil {
			t.Fatalf("fast path accepted what miekg rejects: %v", err)
		}
		if len(m.Question) != 1 || m.Response || m.Opcode != dns.OpcodeQuery || m.Question[0].Qclass != dns.ClassINET {
			t.Fatalf("fast path accepted %v", m)
		}
		name, ok := normalizeName(m.Question[0].Name)
		if !ok {
			t.Fatalf("fast path accepted name %q", m.Question[0].Name)
		}
		want := name + "."
		if got := string(q.key[:len(q.key)-3]); got != want {
			t.Fatalf("key name %q, want %q", got, want)
		}
		if opt := m.IsEdns0(); (opt != nil) != (q.key[len(q.key)-1] == 1) || (opt != nil && opt.Version() != 0) {
			t.Fatalf("edns mismatch: %v vs key %q", opt, q.key)
		}
		// The template splice relies on the question name ending here.
		if q.nameEnd > len(data) || data[q.nameEnd-1] != 0 {
			t.Fatalf("nameEnd %d", q.nameEnd)
		}
	})
}

// packetRec is a net.PacketConn that records what is written to it.
type packetRec struct {
	net.PacketConn // nil: only WriteTo and LocalAddr are used
	writes         [][]byte
}

func (p *packetRec) WriteTo(b []byte, _ net.Addr) (int, error) {
	p.writes = append(p.writes, append([]byte(nil), b...))
	return len(b), nil
}

func (p *packetRec) LocalAddr() net.Addr { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53} }

// FuzzServeUDP feeds raw packets to the UDP path, fast path templates
// included (the seeds fill them): no panic, answers unpack, carry the
// query's id, hand out only allowlisted addresses, and nothing disallowed
// reaches the upstream.
func FuzzServeUDP(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	e, up := newFuzzEnv(f)
	h := e.h.(*handler)
	peer := udpPeer{addr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}}
	for _, s := range fuzzSeeds() {
		h.slowUDP(&packetRec{}, nil, peer, s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		pc := &packetRec{}
		var wg sync.WaitGroup
		h.answerUDP(pc, nil, peer, data, &wg, make(chan struct{}, 1), nil, nil)
		wg.Wait()
		if len(pc.writes) > 1 {
			t.Fatalf("%d answers to one query", len(pc.writes))
		}
		for _, w := range pc.writes {
			m := new(dns.Msg)
			if err := m.Unpack(w); err != nil {
				t.Fatalf("answer does not unpack: %v", err)
			}
			if !m.Response || len(data) < 2 || m.Id != uint16(data[0])<<8|uint16(data[1]) {
				t.Fatalf("answer %v to query %x", m, data)
			}
			for _, a := range addrsOf(m) {
				if !e.allow.allowedAt(netip.MustParseAddr(a).Unmap(), time.Now()) {
					t.Fatalf("answered %s without allowlisting it", a)
				}
			}
		}
		for _, l := range up.queries() {
			if !fuzzUpstreamOK(l) {
				t.Fatalf("upstream saw %q", l)
			}
		}
	})
}
