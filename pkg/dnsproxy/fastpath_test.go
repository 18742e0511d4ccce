package dnsproxy

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-dev/sluice/pkg/audit"
)

// TestUDPFastPath checks that answers served from templates are what the
// slow path would give: client id and spelling, aged TTLs, audit events,
// and invalidation on policy change, allowlist refresh and TTL expiry.
func TestUDPFastPath(t *testing.T) {
	up := startUpstream(t, zone("allowed.test. 300 IN A 192.0.2.10", "other.test. 300 IN A 192.0.2.20"))
	e := newEnv(t, Config{Upstreams: []string{up.addr}}, newTestPolicy("allowed.test", "other.test"))
	var mu sync.Mutex
	clock := time.Now()
	e.r.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	advance := func(d time.Duration) { mu.Lock(); clock = clock.Add(d); mu.Unlock() }

	pc, ln := listenPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.r.Serve(ctx, e.sb, pc, ln) }()
	defer func() { cancel(); <-done }()

	ask := func(name string, edns bool) *dns.Msg {
		t.Helper()
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		if edns {
			q.SetEdns0(1232, false)
		}
		c := &dns.Client{Timeout: 2 * time.Second}
		r, _, err := c.Exchange(q, pc.LocalAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		if r.Id != q.Id || r.Question[0].Name != name {
			t.Fatalf("id %d question %q, want %d %q", r.Id, r.Question[0].Name, q.Id, name)
		}
		return r
	}
	steps := []struct {
		name      string
		before    func()
		qname     string
		edns      bool
		wantAddrs string
		wantTTL   uint32
		wantAllow int // Allow calls so far
	}{
		{"slow path fills the template", nil, "allowed.test.", false, "[192.0.2.10]", 300, 1},
		{"fast hit, other spelling", func() { advance(10 * time.Second) }, "ALLOWED.Test.", false, "[192.0.2.10]", 290, 1},
		{"edns is another template", nil, "allowed.test.", true, "[192.0.2.10]", 290, 1},
		{"fast hit ages TTL", func() { advance(100 * time.Second) }, "allowed.test.", false, "[192.0.2.10]", 190, 1},
		// TTL left 60s at 240s: now+max(60,MinTTL)+grace passes what was
		// written at 0s (300+30) only after 240s + 1s slack.
		{"allowlist refresh takes the slow path", func() { advance(150 * time.Second) }, "allowed.test.", false, "[192.0.2.10]", 40, 2},
		{"policy change takes the slow path", func() {
			e.pol.Store(newTestPolicy("other.test").build(t))
		}, "allowed.test.", false, "[]", 0, 2},
		{"expired upstream answer", func() { advance(100 * time.Second) }, "other.test.", false, "[192.0.2.20]", 300, 3},
	}
	for _, s := range steps {
		if s.before != nil {
			s.before()
		}
		r := ask(s.qname, s.edns)
		if got := fmt.Sprint(addrsOf(r)); got != s.wantAddrs {
			t.Fatalf("%s: addresses %s, want %s (%v)", s.name, got, s.wantAddrs, r)
		}
		if len(r.Answer) > 0 && r.Answer[0].Header().Ttl != s.wantTTL {
			t.Errorf("%s: TTL %d, want %d", s.name, r.Answer[0].Header().Ttl, s.wantTTL)
		}
		if s.edns != (r.IsEdns0() != nil) {
			t.Errorf("%s: OPT in answer %v, want %v", s.name, r.IsEdns0() != nil, s.edns)
		}
		e.allow.mu.Lock()
		calls := e.allow.calls
		e.allow.mu.Unlock()
		if calls != s.wantAllow {
			t.Errorf("%s: %d Allow calls, want %d", s.name, calls, s.wantAllow)
		}
	}
	// Every query has its event, fast or slow.
	e.ev.Wait(t, "one event per query", func(evs []audit.Event) bool { return len(evs) >= len(steps) })
	evs := e.ev.all()
	if len(evs) != len(steps) {
		t.Fatalf("%d events for %d queries", len(evs), len(steps))
	}
	if evs[1].Decision != audit.DecisionAllow || evs[1].QName != "allowed.test" || fmt.Sprint(evs[1].Answers) != "[192.0.2.10]" {
		t.Errorf("fast path event %+v", evs[1])
	}
	if !evs[1].Time.After(evs[0].Time) {
		t.Errorf("fast path event carries the template's time")
	}
	if got := e.allow.entries[netip.MustParseAddr("192.0.2.10")].until; !got.Equal(clock.Add(-100 * time.Second).Add(DefaultMinTTL + DefaultGrace)) {
		t.Errorf("refreshed until %v", got)
	}
}

// TestFastPathRevocation: a template whose addresses were released by the
// per-name cap is not reused.
func TestFastPathRevocation(t *testing.T) {
	b := NewBindings(10, 1)
	b.Add("a.test", "", []netip.Addr{netip.MustParseAddr("192.0.2.1")}, time.Now().Add(time.Hour))
	g := b.gen.Load()
	b.Add("a.test", "", []netip.Addr{netip.MustParseAddr("192.0.2.2")}, time.Now().Add(time.Hour))
	if b.gen.Load() == g {
		t.Fatal("release did not bump the generation")
	}
}

func TestParseQuery(t *testing.T) {
	pack := func(mod func(m *dns.Msg)) []byte {
		m := new(dns.Msg)
		m.SetQuestion("Www.Example.test.", dns.TypeAAAA)
		if mod != nil {
			mod(m)
		}
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tests := []struct {
		name     string
		wire     []byte
		wantOK   bool
		wantSize int
	}{
		{"plain", pack(nil), true, 512},
		{"edns", pack(func(m *dns.Msg) { m.SetEdns0(4096, false) }), true, 4096},
		{"edns small", pack(func(m *dns.Msg) { m.SetEdns0(100, false) }), true, 512},
		{"edns cookie", pack(func(m *dns.Msg) {
			m.SetEdns0(1232, false)
			m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
		}), true, 1232},
		{"edns version 1", pack(func(m *dns.Msg) { m.SetEdns0(1232, false); m.IsEdns0().SetVersion(1) }), false, 0},
		{"response", pack(func(m *dns.Msg) { m.Response = true }), false, 0},
		{"update", pack(func(m *dns.Msg) { m.Opcode = dns.OpcodeUpdate }), false, 0},
		{"chaos", pack(func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS }), false, 0},
		{"escape", pack(func(m *dns.Msg) { m.Question[0].Name = "a\\000.test." }), false, 0},
		{"trailing garbage", append(pack(nil), 0), false, 0},
		{"short", pack(nil)[:20], false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, ok := parseQuery(tt.wire, nil)
			if ok != tt.wantOK {
				t.Fatalf("ok %v, want %v", ok, tt.wantOK)
			}
			if !ok {
				return
			}
			if q.size != tt.wantSize {
				t.Errorf("size %d, want %d", q.size, tt.wantSize)
			}
			if want := "www.example.test.\x00\x1c"; string(q.key[:len(want)]) != want {
				t.Errorf("key %q", q.key)
			}
		})
	}
}

// BenchmarkFastPath measures a template hit without sockets.
func BenchmarkFastPath(b *testing.B) {
	up := startUpstream(b, zone("allowed.test. 300 IN A 192.0.2.10", "allowed.test. 300 IN A 192.0.2.11"))
	e := newEnv(b, Config{Upstreams: []string{up.addr}}, newTestPolicy("allowed.test"))
	e.sb.Audit = nopEmitter{}
	h := e.h.(*handler)
	req := new(dns.Msg)
	req.SetQuestion("allowed.test.", dns.TypeA)
	req.SetEdns0(1232, false)
	wire, _ := req.Pack()
	pc, _ := listenPair(b)
	// Fill the template through the slow path, answering to ourselves.
	h.slowUDP(pc, nil, udpPeer{addr: pc.LocalAddr()}, wire)
	out := make([]byte, 0, 1500)
	key := make([]byte, 0, 300)
	b.ReportAllocs()
	for b.Loop() {
		now := time.Now()
		q, ok := parseQuery(wire, key)
		if !ok {
			b.Fatal("parse")
		}
		ans, t := h.fastAnswer(wire, q, now, out)
		if ans == nil {
			b.Fatal("miss")
		}
		ev := t.ev
		ev.Time = now
		e.sb.Audit.Emit(ev)
	}
}
