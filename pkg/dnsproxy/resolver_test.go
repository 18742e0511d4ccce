package dnsproxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-dev/sluice/pkg/audit"
)

// TestServeAllowDeny runs the resolver on real sockets (UDP and TCP) against
// a real upstream and checks that forbidden names never reach the upstream.
func TestServeAllowDeny(t *testing.T) {
	up := startUpstream(t, zone(
		"allowed.test. 300 IN A 192.0.2.10",
		"allowed.test. 300 IN AAAA 2001:db8::10",
		"forbidden.test. 300 IN A 192.0.2.66",
	))
	e := newEnv(t, Config{Upstreams: []string{up.addr}, Timeout: time.Second}, newTestPolicy("allowed.test"))
	pc, ln := listenPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.r.Serve(ctx, e.sb, pc, ln) }()

	tests := []struct {
		name      string
		qname     string
		qtype     uint16
		net       string
		wantRcode int
		wantAddrs []string
	}{
		{"allowed udp A", "allowed.test", dns.TypeA, "udp", dns.RcodeSuccess, []string{"192.0.2.10"}},
		{"allowed tcp AAAA", "Allowed.Test", dns.TypeAAAA, "tcp", dns.RcodeSuccess, []string{"2001:db8::10"}},
		{"forbidden udp", "forbidden.test", dns.TypeA, "udp", dns.RcodeNameError, nil},
		{"forbidden tcp", "forbidden.test", dns.TypeAAAA, "tcp", dns.RcodeNameError, nil},
		{"forbidden TXT", "forbidden.test", dns.TypeTXT, "udp", dns.RcodeNameError, nil},
		{"allowed TXT not forwarded", "allowed.test", dns.TypeTXT, "udp", dns.RcodeSuccess, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &dns.Client{Net: tt.net, Timeout: 2 * time.Second}
			q := new(dns.Msg)
			q.SetQuestion(dns.Fqdn(tt.qname), tt.qtype)
			r, _, err := c.Exchange(q, pc.LocalAddr().String())
			if err != nil {
				t.Fatal(err)
			}
			if r.Id != q.Id || r.Question[0].Name != q.Question[0].Name {
				t.Fatalf("reply id/question %d %q, want %d %q", r.Id, r.Question[0].Name, q.Id, q.Question[0].Name)
			}
			if r.Rcode != tt.wantRcode {
				t.Fatalf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.wantRcode])
			}
			if got := fmt.Sprint(addrsOf(r)); got != fmt.Sprint(tt.wantAddrs) {
				t.Fatalf("addresses %s, want %v", got, tt.wantAddrs)
			}
			for _, a := range tt.wantAddrs {
				if !e.allow.allowedAt(netip.MustParseAddr(a), time.Now().Add(DefaultMinTTL)) {
					t.Errorf("%s not in the allowlist", a)
				}
			}
		})
	}
	if up.saw("forbidden.test") {
		t.Errorf("forbidden name reached the upstream: %v", up.queries())
	}
	if got := up.queries(); len(got) != 2 {
		t.Errorf("upstream saw %v, want the two allowed queries only", got)
	}
	// The server emits each event after it has replied: wait for all six.
	evs := e.ev.Wait(t, "one event per query", func(evs []audit.Event) bool { return len(evs) >= len(tests) })
	var deny int
	for _, ev := range evs {
		if ev.Kind != audit.KindDNS || ev.Sandbox != "sb1" || ev.CgroupID != 42 {
			t.Errorf("event %+v: wrong kind or sandbox", ev)
		}
		if ev.Decision == audit.DecisionDeny && ev.QName == "forbidden.test" {
			deny++
		}
	}
	if len(evs) != len(tests) || deny != 3 {
		t.Errorf("%d events with %d deny events for forbidden.test, want %d with 3", len(evs), deny, len(tests))
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
}

// TestExfiltration: 1,000 subdomain-encoded queries produce zero upstream
// queries.
func TestExfiltration(t *testing.T) {
	up := startUpstream(t, zone("allowed.test. 300 IN A 192.0.2.10"))
	e := newEnv(t, Config{Upstreams: []string{up.addr}}, newTestPolicy("allowed.test", "*.allowed.test"))
	types := []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeTXT, dns.TypeCNAME, dns.TypeHTTPS, dns.TypeANY, dns.TypeMX, dns.TypeNULL}
	for i := range 1000 {
		name := fmt.Sprintf("%x.%x.attacker.test", []byte(fmt.Sprintf("secret-%04d", i)), i*7919)
		m := e.query(t, name, types[i%len(types)])
		if m.Rcode != dns.RcodeNameError || len(m.Answer) != 0 {
			t.Fatalf("%s: rcode %s with %d answers, want NXDOMAIN", name, dns.RcodeToString[m.Rcode], len(m.Answer))
		}
	}
	if q := up.queries(); len(q) != 0 {
		t.Fatalf("upstream saw %d queries, want 0: %v", len(q), q[:min(len(q), 5)])
	}
	if n := len(e.ev.all()); n != 1000 {
		t.Fatalf("%d audit events, want 1000", n)
	}
}

// TestRotatingAddresses: an answer that rotates among 8 addresses leaves all
// 8 allowed within TTL+grace, bound to the name.
func TestRotatingAddresses(t *testing.T) {
	var n atomic.Int32
	up := startUpstream(t, func(q dns.Question, _ string, m *dns.Msg) {
		i := n.Add(1) - 1
		rr, _ := dns.NewRR(fmt.Sprintf("%s 0 IN A 198.51.100.%d", q.Name, 1+i%8))
		m.Answer = append(m.Answer, rr) // TTL 0: never cached
	})
	e := newEnv(t, Config{Upstreams: []string{up.addr}, MinTTL: time.Minute, Grace: 30 * time.Second}, newTestPolicy("cdn.test"))
	start := time.Now()
	for range 8 {
		if m := e.query(t, "cdn.test", dns.TypeA); len(m.Answer) != 1 {
			t.Fatalf("answer %v", m)
		}
	}
	if got := len(up.queries()); got != 8 {
		t.Fatalf("upstream saw %d queries, want 8 (TTL 0 is not cached)", got)
	}
	for i := 1; i <= 8; i++ {
		a := netip.MustParseAddr(fmt.Sprintf("198.51.100.%d", i))
		if !e.allow.allowedAt(a, start.Add(89*time.Second)) {
			t.Errorf("%s not allowed inside TTL+grace", a)
		}
		if e.allow.allowedAt(a, time.Now().Add(91*time.Second)) {
			t.Errorf("%s allowed beyond MinTTL+grace", a)
		}
		if got := e.sb.Bindings.Names(a); fmt.Sprint(got) != "[cdn.test]" {
			t.Errorf("Names(%s) = %v, want [cdn.test]", a, got)
		}
	}
}

func TestRemap(t *testing.T) {
	up := startUpstream(t, zone(
		"registry.npmjs.org. 300 IN A 104.16.0.1",
		"npm.mirror.internal. 300 IN A 127.0.0.9",
		"npm.mirror.internal. 300 IN AAAA ::1",
	))
	e := newEnv(t, Config{Upstreams: []string{up.addr}}, newTestPolicy(
		"registry.npmjs.org>npm.mirror.internal"))

	m := e.query(t, "Registry.NPMjs.org", dns.TypeA)
	if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
		t.Fatalf("answer %v", m)
	}
	if got := m.Answer[0].Header().Name; got != "Registry.NPMjs.org." {
		t.Errorf("owner %q, want the name asked", got)
	}
	if got := addrsOf(m); fmt.Sprint(got) != "[127.0.0.9]" {
		t.Errorf("addresses %v, want the mirror's", got)
	}
	if up.saw("registry.npmjs.org") {
		t.Error("the remapped name itself was sent upstream")
	}
	bs := e.sb.Bindings.Lookup(netip.MustParseAddr("127.0.0.9"))
	if len(bs) != 1 || bs[0].Name != "registry.npmjs.org" || bs[0].Target != "npm.mirror.internal" {
		t.Errorf("bindings %+v, want registry.npmjs.org -> npm.mirror.internal", bs)
	}
	if !e.allow.allowedAt(netip.MustParseAddr("127.0.0.9"), time.Now()) {
		t.Error("mirror address not allowed")
	}
	if m := e.query(t, "registry.npmjs.org", dns.TypeAAAA); fmt.Sprint(addrsOf(m)) != "[::1]" {
		t.Errorf("AAAA %v", m)
	}
	if m := e.query(t, "registry.npmjs.org", dns.TypeHTTPS); m.Rcode != dns.RcodeSuccess || len(m.Answer) != 0 {
		t.Errorf("HTTPS of a remapped name: %v, want NODATA", m)
	}

}

// blackhole is a UDP socket nobody answers on, then starts answering.
func TestUpstreamDownThenBack(t *testing.T) {
	pc, ln := listenPair(t)
	addr := pc.LocalAddr().String()
	const timeout = 400 * time.Millisecond
	e := newEnv(t, Config{Upstreams: []string{addr}, Timeout: timeout}, newTestPolicy("allowed.test"))

	start := time.Now()
	m := e.query(t, "allowed.test", dns.TypeA)
	took := time.Since(start)
	if m.Rcode != dns.RcodeServerFailure || len(m.Answer) != 0 {
		t.Fatalf("upstream down: %v, want SERVFAIL", m)
	}
	if took > timeout+500*time.Millisecond { // slack for a loaded CI machine
		t.Fatalf("SERVFAIL after %v, want within %v", took, timeout)
	}
	if ev := e.ev.last(t); ev.Decision != audit.DecisionError || ev.Rcode != "SERVFAIL" {
		t.Errorf("event %+v", ev)
	}
	if len(e.allow.entries) != 0 {
		t.Error("allowlist written for a failed resolution")
	}

	up := &upstream{addr: addr, answer: zone("allowed.test. 300 IN A 192.0.2.10")}
	serveOn(t, up, pc, ln)
	m = e.query(t, "allowed.test", dns.TypeA)
	if m.Rcode != dns.RcodeSuccess || fmt.Sprint(addrsOf(m)) != "[192.0.2.10]" {
		t.Fatalf("upstream back: %v", m)
	}
}

func TestTruncationFallsBackToTCP(t *testing.T) {
	up := startUpstream(t, func(q dns.Question, network string, m *dns.Msg) {
		if network == "udp" {
			m.Truncated = true
			return
		}
		for i := 1; i <= 3; i++ {
			rr, _ := dns.NewRR(fmt.Sprintf("%s 300 IN A 192.0.2.%d", q.Name, i))
			m.Answer = append(m.Answer, rr)
		}
	})
	e := newEnv(t, Config{Upstreams: []string{up.addr}}, newTestPolicy("big.test"))
	m := e.query(t, "big.test", dns.TypeA)
	if got := fmt.Sprint(addrsOf(m)); got != "[192.0.2.1 192.0.2.2 192.0.2.3]" {
		t.Fatalf("addresses %s", got)
	}
	if got := fmt.Sprint(up.queries()); got != "[big.test. A udp big.test. A tcp]" {
		t.Fatalf("upstream log %s, want udp then tcp", got)
	}
}

func TestFailover(t *testing.T) {
	tests := []struct {
		name  string
		first func(t *testing.T) string
	}{
		{"servfail", func(t *testing.T) string {
			return startUpstream(t, func(_ dns.Question, _ string, m *dns.Msg) { m.Rcode = dns.RcodeServerFailure }).addr
		}},
		{"refused", func(t *testing.T) string {
			return startUpstream(t, func(_ dns.Question, _ string, m *dns.Msg) { m.Rcode = dns.RcodeRefused }).addr
		}},
		{"silent", func(t *testing.T) string {
			pc, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { pc.Close() })
			return pc.LocalAddr().String()
		}},
		{"wrong question", func(t *testing.T) string {
			return startUpstream(t, func(q dns.Question, _ string, m *dns.Msg) {
				m.Question[0].Name = "other.test."
				rr, _ := dns.NewRR("other.test. 300 IN A 203.0.113.1")
				m.Answer = append(m.Answer, rr)
			}).addr
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			second := startUpstream(t, zone("allowed.test. 300 IN A 192.0.2.10"))
			e := newEnv(t, Config{Upstreams: []string{tt.first(t), second.addr}, Timeout: time.Second},
				newTestPolicy("allowed.test"))
			m := e.query(t, "allowed.test", dns.TypeA)
			if fmt.Sprint(addrsOf(m)) != "[192.0.2.10]" {
				t.Fatalf("answer %v, want the second upstream's", m)
			}
		})
	}
}

func TestAllowlistFailureIsServfail(t *testing.T) {
	up := startUpstream(t, zone("allowed.test. 300 IN A 192.0.2.10"))
	e := newEnv(t, Config{Upstreams: []string{up.addr}}, newTestPolicy("allowed.test"))
	e.allow.fail = errBoom
	m := e.query(t, "allowed.test", dns.TypeA)
	if m.Rcode != dns.RcodeServerFailure || len(m.Answer) != 0 {
		t.Fatalf("answer %v, want SERVFAIL without addresses", m)
	}
	if ev := e.ev.last(t); ev.Decision != audit.DecisionError || !strings.Contains(ev.Reason, "allowlist") {
		t.Errorf("event %+v", ev)
	}
	if e.sb.Bindings.Names(netip.MustParseAddr("192.0.2.10")) != nil {
		t.Error("binding recorded although the allowlist write failed")
	}
}

// TestServeConcurrent mixes allowed, denied and rotating queries from many
// clients over UDP and TCP (run with -race).
func TestServeConcurrent(t *testing.T) {
	var n atomic.Int32
	up := startUpstream(t, func(q dns.Question, _ string, m *dns.Msg) {
		switch strings.ToLower(q.Name) {
		case "allowed.test.":
			rr, _ := dns.NewRR(q.Name + " 300 IN A 192.0.2.10")
			m.Answer = append(m.Answer, rr)
		case "rot.test.":
			rr, _ := dns.NewRR(fmt.Sprintf("%s 1 IN A 198.51.100.%d", q.Name, 1+n.Add(1)%8))
			m.Answer = append(m.Answer, rr)
		default:
			m.Rcode = dns.RcodeNameError
		}
	})
	e := newEnv(t, Config{Upstreams: []string{up.addr}}, newTestPolicy("allowed.test", "rot.test"))
	pc, ln := listenPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.r.Serve(ctx, e.sb, pc, ln) }()
	errs := make(chan error, 64)
	for g := range 32 {
		go func() {
			c := &dns.Client{Net: []string{"udp", "tcp"}[g%2], Timeout: 3 * time.Second}
			for i := range 20 {
				name := []string{"allowed.test.", "rot.test.", fmt.Sprintf("%d-%d.evil.test.", g, i)}[i%3]
				q := new(dns.Msg)
				q.SetQuestion(name, dns.TypeA)
				r, _, err := c.Exchange(q, pc.LocalAddr().String())
				if err != nil {
					errs <- err
					return
				}
				want := dns.RcodeSuccess
				if i%3 == 2 {
					want = dns.RcodeNameError
				}
				if r.Rcode != want || (want == dns.RcodeSuccess && len(r.Answer) != 1) {
					errs <- fmt.Errorf("%s: %v", name, r)
					return
				}
				for _, a := range addrsOf(r) {
					if !e.allow.allowedAt(netip.MustParseAddr(a), time.Now()) {
						errs <- fmt.Errorf("%s answered but not allowed", a)
						return
					}
				}
			}
			errs <- nil
		}()
	}
	for range 32 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, l := range up.queries() {
		if strings.Contains(l, "evil") {
			t.Fatalf("denied name forwarded: %s", l)
		}
	}
}
