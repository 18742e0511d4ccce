package dnsproxy

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-dev/sluice/pkg/audit"
)

func TestCNAMEChain(t *testing.T) {
	up := startUpstream(t, zone(
		"www.allowed.test. 300 IN CNAME edge.cdn.test.",
		"edge.cdn.test. 120 IN CNAME e1.cdn.test.",
		"e1.cdn.test. 60 IN A 192.0.2.21",
		"e1.cdn.test. 60 IN A 192.0.2.22",
		"via-denied.allowed.test. 300 IN CNAME blocked.evil.test.",
		"blocked.evil.test. 300 IN A 192.0.2.99",
		"loop.allowed.test. 300 IN CNAME loop2.allowed.test.",
		"loop2.allowed.test. 300 IN CNAME loop.allowed.test.",
		"dangling.allowed.test. 300 IN CNAME nowhere.cdn.test.",
		"bad.allowed.test. 300 IN CNAME a\\000b.cdn.test.",
	))
	tests := []struct {
		name       string
		qname      string
		qtype      uint16
		wantRcode  int
		wantAddrs  string
		wantChain  int
		wantReason string
	}{
		{"unmatched cdn aliases accepted", "www.allowed.test", dns.TypeA, dns.RcodeSuccess, "[192.0.2.21 192.0.2.22]", 2, ""},
		{"chain through denied name", "via-denied.allowed.test", dns.TypeA, dns.RcodeNameError, "[]", 0, "blocked.evil.test"},
		{"loop", "loop.allowed.test", dns.TypeA, dns.RcodeServerFailure, "[]", 0, "too long"},
		{"dangling chain", "dangling.allowed.test", dns.TypeA, dns.RcodeSuccess, "[]", 1, ""},
		{"invalid target", "bad.allowed.test", dns.TypeA, dns.RcodeNameError, "[]", 0, "invalid cname"},
		{"CNAME query", "www.allowed.test", dns.TypeCNAME, dns.RcodeSuccess, "[]", 1, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, Config{Upstreams: []string{up.addr}}, newTestPolicy("*.allowed.test", "!*.evil.test"))
			m := e.query(t, tt.qname, tt.qtype)
			if m.Rcode != tt.wantRcode {
				t.Fatalf("rcode %s, want %s: %v", dns.RcodeToString[m.Rcode], dns.RcodeToString[tt.wantRcode], m)
			}
			if got := fmt.Sprint(addrsOf(m)); got != tt.wantAddrs {
				t.Errorf("addresses %s, want %s", got, tt.wantAddrs)
			}
			chain := 0
			for _, rr := range m.Answer {
				if _, ok := rr.(*dns.CNAME); ok {
					chain++
				}
			}
			if chain != tt.wantChain {
				t.Errorf("%d CNAMEs in the answer, want %d", chain, tt.wantChain)
			}
			ev := e.ev.last(t)
			if !strings.Contains(ev.Reason, tt.wantReason) {
				t.Errorf("reason %q, want %q", ev.Reason, tt.wantReason)
			}
			if tt.wantRcode != dns.RcodeSuccess && len(e.allow.entries) != 0 {
				t.Errorf("allowlist written: %v", e.allow.entries)
			}
		})
	}
	t.Run("addresses bound to the asked name", func(t *testing.T) {
		e := newEnv(t, Config{Upstreams: []string{up.addr}, MinTTL: time.Second, Grace: time.Second}, newTestPolicy("*.allowed.test"))
		m := e.query(t, "WWW.allowed.test", dns.TypeA)
		if m.Answer[0].Header().Name != "WWW.allowed.test." {
			t.Errorf("first owner %q, want the spelling asked", m.Answer[0].Header().Name)
		}
		for _, rr := range m.Answer {
			if _, ok := rr.(*dns.A); ok && rr.Header().Ttl > 60 {
				t.Errorf("TTL %d above the chain minimum", rr.Header().Ttl)
			}
		}
		for _, a := range []string{"192.0.2.21", "192.0.2.22"} {
			if got := e.sb.Bindings.Names(netip.MustParseAddr(a)); fmt.Sprint(got) != "[www.allowed.test]" {
				t.Errorf("Names(%s) = %v", a, got)
			}
			// until = now + max(60s chain TTL, 1s MinTTL) + 1s grace.
			if !e.allow.allowedAt(netip.MustParseAddr(a), time.Now().Add(60*time.Second)) ||
				e.allow.allowedAt(netip.MustParseAddr(a), time.Now().Add(62*time.Second)) {
				t.Errorf("%s expiry %v, want the chain's minimum TTL plus grace", a, e.allow.entries[netip.MustParseAddr(a)])
			}
		}
	})
}

func TestHTTPSStripped(t *testing.T) {
	up := startUpstream(t, zone(
		`svc.test. 300 IN HTTPS 1 . mandatory=alpn,ipv4hint alpn=h2,h3 ipv4hint=192.0.2.1 ech="AEX+DQBBpQAgACDd" ipv6hint=2001:db8::1 port=8443`,
		`svc.test. 300 IN SVCB 1 svc2.test. ipv4hint=192.0.2.1 alpn=h2`,
	))
	e := newEnv(t, Config{Upstreams: []string{up.addr}}, newTestPolicy("svc.test"))
	for _, qt := range []uint16{dns.TypeHTTPS, dns.TypeSVCB} {
		m := e.query(t, "svc.test", qt)
		if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
			t.Fatalf("%s answer %v", dns.TypeToString[qt], m)
		}
		s := m.Answer[0].String()
		for _, bad := range []string{"ech=", "ipv4hint", "ipv6hint"} {
			if strings.Contains(s, bad) {
				t.Errorf("%s still carries %s: %s", dns.TypeToString[qt], bad, s)
			}
		}
		if !strings.Contains(s, `alpn="h2`) {
			t.Errorf("%s lost alpn: %s", dns.TypeToString[qt], s)
		}
		if qt == dns.TypeHTTPS && !strings.Contains(s, `mandatory="alpn" alpn="h2,h3" port="8443"`) {
			t.Errorf("HTTPS record %s, want mandatory=alpn and port kept", s)
		}
	}
	if len(e.allow.entries) != 0 {
		t.Errorf("hints reached the allowlist: %v", e.allow.entries)
	}
}

func TestCacheTTL(t *testing.T) {
	up := startUpstream(t, zone(
		"cached.test. 300 IN A 192.0.2.30",
		"nodata.test. 300 IN AAAA 2001:db8::30",
	))
	e := newEnv(t, Config{Upstreams: []string{up.addr}}, newTestPolicy("cached.test", "nodata.test", "missing.test"))
	clock := time.Now()
	var mu sync.Mutex
	e.r.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	advance := func(d time.Duration) { mu.Lock(); clock = clock.Add(d); mu.Unlock() }

	steps := []struct {
		name      string
		qname     string
		qtype     uint16
		advance   time.Duration
		wantTTL   uint32 // of the first answer or the SOA
		wantCalls int
	}{
		{"miss", "cached.test", dns.TypeA, 0, 300, 1},
		{"hit decrements", "cached.test", dns.TypeA, 100 * time.Second, 200, 1},
		{"hit again", "cached.test", dns.TypeA, 99 * time.Second, 101, 1},
		{"expired", "cached.test", dns.TypeA, 101 * time.Second, 300, 2},
		{"nxdomain miss", "missing.test", dns.TypeA, 0, 30, 3},
		{"nxdomain cached", "missing.test", dns.TypeA, 10 * time.Second, 20, 3},
		{"nxdomain expired", "missing.test", dns.TypeA, 21 * time.Second, 30, 4},
		{"nodata miss", "nodata.test", dns.TypeA, 0, 0, 5},
		{"nodata cached", "nodata.test", dns.TypeA, time.Second, 0, 5},
	}
	for _, s := range steps {
		advance(s.advance)
		m := e.query(t, s.qname, s.qtype)
		var ttl uint32
		switch {
		case len(m.Answer) > 0:
			ttl = m.Answer[0].Header().Ttl
		case len(m.Ns) > 0:
			ttl = m.Ns[0].Header().Ttl
			if s.qname == "nodata.test" {
				ttl = 0 // only the call count matters here
			}
		}
		if ttl != s.wantTTL {
			t.Errorf("%s: TTL %d, want %d (%v)", s.name, ttl, s.wantTTL, m)
		}
		if got := len(up.queries()); got != s.wantCalls {
			t.Errorf("%s: %d upstream queries, want %d", s.name, got, s.wantCalls)
		}
	}
}

func TestQueryTypesAndNames(t *testing.T) {
	up := startUpstream(t, zone(
		"allowed.test. 300 IN A 192.0.2.10",
		"allowed.test. 300 IN AAAA 2001:db8::10",
		"allowed.test. 300 IN TXT \"hello\"",
		"allowed.test. 300 IN MX 10 mx.allowed.test.",
		"local.test. 300 IN A 127.0.0.1",
		"meta.test. 300 IN A 169.254.169.254",
		"meta.test. 300 IN A 192.0.2.50",
		"zero.test. 300 IN A 0.0.0.0",
		"zero.test. 300 IN AAAA fd00:ec2::254",
	))
	tests := []struct {
		name       string
		pol        testPolicy
		qname      string
		qtype      uint16
		wantRcode  int
		wantAddrs  string
		wantUp     bool
		wantDec    string
		wantReason string
	}{
		{"TXT not forwarded", newTestPolicy("allowed.test"), "allowed.test", dns.TypeTXT, dns.RcodeSuccess, "[]", false, audit.DecisionDeny, reasonType},
		{"ANY not forwarded", newTestPolicy("allowed.test"), "allowed.test", dns.TypeANY, dns.RcodeSuccess, "[]", false, audit.DecisionDeny, reasonType},
		{"MX not forwarded", newTestPolicy("allowed.test"), "allowed.test", dns.TypeMX, dns.RcodeSuccess, "[]", false, audit.DecisionDeny, reasonType},
		{"AAAA with ipv6 off", newTestPolicy("allowed.test").noIPv6(), "allowed.test", dns.TypeAAAA, dns.RcodeSuccess, "[]", false, audit.DecisionAllow, reasonIPv6Off},
		{"A with ipv6 off", newTestPolicy("allowed.test").noIPv6(), "allowed.test", dns.TypeA, dns.RcodeSuccess, "[192.0.2.10]", true, audit.DecisionAllow, ""},
		{"NUL in name", newTestPolicy("*.allowed.test"), "a\\000b.allowed.test", dns.TypeA, dns.RcodeNameError, "[]", false, audit.DecisionDeny, reasonInvalidName},
		{"escaped dot", newTestPolicy("*.allowed.test"), "a\\.b.allowed.test", dns.TypeA, dns.RcodeNameError, "[]", false, audit.DecisionDeny, reasonInvalidName},
		{"wildcard", newTestPolicy("*.allowed.test"), "*.allowed.test", dns.TypeA, dns.RcodeNameError, "[]", false, audit.DecisionDeny, reasonInvalidName},
		{"root", newTestPolicy("*.allowed.test"), ".", dns.TypeA, dns.RcodeNameError, "[]", false, audit.DecisionDeny, reasonInvalidName},
		{"audit mode resolves denied", newTestPolicy("other.test").auditMode(), "allowed.test", dns.TypeA, dns.RcodeSuccess, "[192.0.2.10]", true, audit.DecisionWouldDeny, reasonNotAllowed},
		{"audit mode TXT", newTestPolicy("allowed.test").auditMode(), "allowed.test", dns.TypeTXT, dns.RcodeSuccess, "[]", true, audit.DecisionWouldDeny, reasonType},
		{"loopback answer dropped", newTestPolicy("local.test"), "local.test", dns.TypeA, dns.RcodeSuccess, "[]", true, audit.DecisionAllow, reasonDropped},
		{"link-local answer dropped", newTestPolicy("meta.test"), "meta.test", dns.TypeA, dns.RcodeSuccess, "[192.0.2.50]", true, audit.DecisionAllow, reasonDropped},
		{"unspecified and metadata dropped", newTestPolicy("zero.test"), "zero.test", dns.TypeA, dns.RcodeSuccess, "[]", true, audit.DecisionAllow, reasonDropped},
		{"metadata v6 dropped", newTestPolicy("zero.test"), "zero.test", dns.TypeAAAA, dns.RcodeSuccess, "[]", true, audit.DecisionAllow, reasonDropped},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up.mu.Lock()
			up.log = nil
			up.mu.Unlock()
			e := newEnv(t, Config{Upstreams: []string{up.addr}}, tt.pol)
			m := e.query(t, tt.qname, tt.qtype)
			if m.Rcode != tt.wantRcode {
				t.Errorf("rcode %s, want %s", dns.RcodeToString[m.Rcode], dns.RcodeToString[tt.wantRcode])
			}
			if got := fmt.Sprint(addrsOf(m)); got != tt.wantAddrs {
				t.Errorf("addresses %s, want %s", got, tt.wantAddrs)
			}
			if tt.qtype == dns.TypeTXT && !tt.pol.audit && len(m.Answer) != 0 {
				t.Errorf("TXT answered: %v", m.Answer)
			}
			if got := len(up.queries()) > 0; got != tt.wantUp {
				t.Errorf("forwarded %v, want %v: %v", got, tt.wantUp, up.queries())
			}
			ev := e.ev.last(t)
			if ev.Decision != tt.wantDec || ev.Reason != tt.wantReason {
				t.Errorf("event decision %q reason %q, want %q %q", ev.Decision, ev.Reason, tt.wantDec, tt.wantReason)
			}
			if ev.QType != dns.TypeToString[tt.qtype] || ev.Rcode != dns.RcodeToString[tt.wantRcode] {
				t.Errorf("event %+v", ev)
			}
			var n int
			for a := range e.allow.entries {
				if !strings.Contains(tt.wantAddrs, a.String()) {
					t.Errorf("%s allowed but not answered", a)
				}
				n++
			}
			if tt.wantAddrs == "[]" && n != 0 {
				t.Errorf("allowlist written: %v", e.allow.entries)
			}
		})
	}
}

func TestAllowLoopbackConfig(t *testing.T) {
	up := startUpstream(t, zone("local.test. 300 IN A 127.0.0.5"))
	e := newEnv(t, Config{Upstreams: []string{up.addr}, AllowLoopback: true}, newTestPolicy("local.test"))
	if got := fmt.Sprint(addrsOf(e.query(t, "local.test", dns.TypeA))); got != "[127.0.0.5]" {
		t.Fatalf("addresses %s, want loopback kept with AllowLoopback", got)
	}
}

func TestMalformedQueries(t *testing.T) {
	up := startUpstream(t, zone("allowed.test. 300 IN A 192.0.2.10"))
	e := newEnv(t, Config{Upstreams: []string{up.addr}}, newTestPolicy("allowed.test"))
	q := func(mod func(m *dns.Msg)) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion("allowed.test.", dns.TypeA)
		mod(m)
		return m
	}
	tests := []struct {
		name      string
		req       *dns.Msg
		wantRcode int
		wantNil   bool
	}{
		{"no question", q(func(m *dns.Msg) { m.Question = nil }), dns.RcodeFormatError, false},
		{"two questions", q(func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) }), dns.RcodeFormatError, false},
		{"notify", q(func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify }), dns.RcodeNotImplemented, false},
		{"chaos class", q(func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS }), dns.RcodeRefused, false},
		{"edns version 1", q(func(m *dns.Msg) { m.SetEdns0(1232, false); m.IsEdns0().SetVersion(1) }), dns.RcodeBadVers, false},
		{"response", q(func(m *dns.Msg) { m.Response = true }), 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			e.h.ServeDNS(rec, tt.req)
			if tt.wantNil {
				if rec.msg != nil {
					t.Fatalf("answered a response: %v", rec.msg)
				}
				return
			}
			if rec.msg == nil || rec.msg.Rcode != tt.wantRcode || rec.msg.Id != tt.req.Id {
				t.Fatalf("answer %v, want rcode %s", rec.msg, dns.RcodeToString[tt.wantRcode])
			}
		})
	}
	if len(up.queries()) != 0 {
		t.Errorf("malformed queries forwarded: %v", up.queries())
	}
}

func TestTruncateForClient(t *testing.T) {
	up := startUpstream(t, func(q dns.Question, _ string, m *dns.Msg) {
		for i := range 100 {
			rr, _ := dns.NewRR(fmt.Sprintf("%s 300 IN A 10.0.%d.%d", q.Name, i/250, 1+i%250))
			m.Answer = append(m.Answer, rr)
		}
	})
	e := newEnv(t, Config{Upstreams: []string{up.addr}, PerNameCap: 200}, newTestPolicy("many.test"))
	tests := []struct {
		name    string
		edns    uint16
		remote  net.Addr
		wantTC  bool
		wantAll bool
		maxLen  int
	}{
		{"udp no edns", 0, nil, true, false, 512},
		{"udp edns 1232", 1232, nil, false, false, 1232},
		{"udp edns 4096", 4096, nil, false, true, 4096},
		{"tcp", 0, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}, false, true, 65535},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := new(dns.Msg)
			req.SetQuestion("many.test.", dns.TypeA)
			if tt.edns > 0 {
				req.SetEdns0(tt.edns, false)
			}
			rec := &recorder{remote: tt.remote}
			e.h.ServeDNS(rec, req)
			if rec.wire > tt.maxLen {
				t.Errorf("%d bytes, want at most %d", rec.wire, tt.maxLen)
			}
			if tt.wantAll && len(rec.msg.Answer) != 100 {
				t.Errorf("%d answers, want 100", len(rec.msg.Answer))
			}
			// 100 compressed A records are ~1.6 kB: 1232 truncates too.
			if wantTC := tt.wantTC || tt.edns == 1232; rec.msg.Truncated != wantTC {
				t.Errorf("TC %v, want %v", rec.msg.Truncated, wantTC)
			}
			if tt.edns > 0 && rec.msg.IsEdns0() == nil {
				t.Error("EDNS0 query answered without OPT")
			}
		})
	}
}

func TestBindingsCap(t *testing.T) {
	b := NewBindings(100, 4)
	until := time.Now().Add(time.Hour)
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}) }
	for i := 1; i <= 4; i++ {
		if rel := b.Add("a.test", "", []netip.Addr{addr(i)}, until); len(rel) != 0 {
			t.Fatalf("released %v below the cap", rel)
		}
	}
	// Shared address: a second name keeps 192.0.2.1 bound.
	b.Add("b.test", "", []netip.Addr{addr(1)}, until)
	// Touch 2 so 1 and 3 are the oldest.
	b.Add("a.test", "", []netip.Addr{addr(2)}, until)
	rel := b.Add("a.test", "", []netip.Addr{addr(5), addr(6)}, until)
	if fmt.Sprint(rel) != "[192.0.2.3]" {
		t.Fatalf("released %v, want [192.0.2.3] (192.0.2.1 is still bound to b.test)", rel)
	}
	if got := b.Names(addr(1)); fmt.Sprint(got) != "[b.test]" {
		t.Errorf("Names(1) = %v", got)
	}
	for _, i := range []int{2, 4, 5, 6} {
		if got := b.Names(addr(i)); fmt.Sprint(got) != "[a.test]" {
			t.Errorf("Names(%d) = %v", i, got)
		}
	}
	if got := b.Names(netip.MustParseAddr("::ffff:192.0.2.2")); fmt.Sprint(got) != "[a.test]" {
		t.Errorf("Names(v4-mapped) = %v", got)
	}
	b.Add("c.test", "", []netip.Addr{addr(9)}, time.Now().Add(-time.Second))
	if got := b.Names(addr(9)); got != nil {
		t.Errorf("expired binding returned: %v", got)
	}
}

// TestRevokeOnEviction: addresses evicted by the per-name cap leave the
// allowlist when the Allowlister can revoke.
func TestRevokeOnEviction(t *testing.T) {
	var n int
	var mu sync.Mutex
	up := startUpstream(t, func(q dns.Question, _ string, m *dns.Msg) {
		mu.Lock()
		n++
		i := n
		mu.Unlock()
		rr, _ := dns.NewRR(fmt.Sprintf("%s 0 IN A 198.51.100.%d", q.Name, i))
		m.Answer = append(m.Answer, rr)
	})
	e := newEnv(t, Config{Upstreams: []string{up.addr}, PerNameCap: 3}, newTestPolicy("cdn.test"))
	for range 5 {
		e.query(t, "cdn.test", dns.TypeA)
	}
	if got := fmt.Sprint(e.allow.revoked); got != "[198.51.100.1 198.51.100.2]" {
		t.Fatalf("revoked %s", got)
	}
	for i := 3; i <= 5; i++ {
		if !e.allow.allowedAt(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), time.Now()) {
			t.Errorf("198.51.100.%d not allowed", i)
		}
	}
}

// TestAllowRefreshSkipped: cache hits do not rewrite fresh allowlist
// entries, but a later expiry is written.
func TestAllowRefreshSkipped(t *testing.T) {
	up := startUpstream(t, zone("allowed.test. 300 IN A 192.0.2.10"))
	e := newEnv(t, Config{Upstreams: []string{up.addr}}, newTestPolicy("allowed.test"))
	clock := time.Now()
	e.r.now = func() time.Time { return clock }
	e.query(t, "allowed.test", dns.TypeA)
	e.query(t, "allowed.test", dns.TypeA)
	if e.allow.calls != 1 {
		t.Fatalf("%d Allow calls, want 1", e.allow.calls)
	}
	clock = clock.Add(250 * time.Second) // TTL left 50s < MinTTL: until moves on
	e.query(t, "allowed.test", dns.TypeA)
	if e.allow.calls != 2 {
		t.Fatalf("%d Allow calls, want 2", e.allow.calls)
	}
	want := clock.Add(DefaultMinTTL + DefaultGrace)
	if got := e.allow.entries[netip.MustParseAddr("192.0.2.10")].until; !got.Equal(want) {
		t.Errorf("until %v, want %v", got, want)
	}
}

func TestUpstreamsFromResolvConf(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		content string
		want    string
		wantErr string
	}{
		{"two servers", "nameserver 127.0.0.53\nnameserver ::1\noptions edns0\n", "[127.0.0.53:53 [::1]:53]", ""},
		{"none", "search example.test\n", "", "no nameserver"},
		{"missing file", "", "", "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_"))
			if tt.content != "" {
				if err := os.WriteFile(p, []byte(tt.content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			got, err := UpstreamsFromResolvConf(p)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || fmt.Sprint(got) != tt.want {
				t.Fatalf("got %v %v, want %s", got, err, tt.want)
			}
		})
	}
}

func TestNewConfigErrors(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"no upstreams", Config{}, "no upstream"},
		{"no port", Config{Upstreams: []string{"127.0.0.1"}}, "host:port"},
		{"negative grace", Config{Upstreams: []string{"127.0.0.1:53"}, Grace: -time.Second}, "negative"},
		{"ok", Config{Upstreams: []string{"127.0.0.1:53"}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg, discardLogger())
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestNormalizeName(t *testing.T) {
	long := strings.Repeat("a", 63)
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"Example.COM.", "example.com", true},
		{"example.com", "example.com", true},
		{"_acme-challenge.x.test.", "_acme-challenge.x.test", true},
		{long + ".test.", long + ".test", true},
		{long + "a.test.", "", false},
		{"a..b.", "", false},
		{".", "", false},
		{"", "", false},
		{"a b.test.", "", false},
		{"a\\000.test.", "", false},
		{"*.test.", "", false},
		{strings.Repeat("a.", 127) + "ab.", "", false},
	}
	for _, tt := range tests {
		got, ok := normalizeName(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("normalizeName(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// TestAnswerTrimmedToCap: an answer with more addresses than the per-name
// cap hands out only as many as stay allowed.
func TestAnswerTrimmedToCap(t *testing.T) {
	up := startUpstream(t, func(q dns.Question, _ string, m *dns.Msg) {
		for i := 1; i <= 6; i++ {
			rr, _ := dns.NewRR(fmt.Sprintf("%s 300 IN A 198.51.100.%d", q.Name, i))
			m.Answer = append(m.Answer, rr)
		}
	})
	e := newEnv(t, Config{Upstreams: []string{up.addr}, PerNameCap: 4}, newTestPolicy("many.test"))
	m := e.query(t, "many.test", dns.TypeA)
	if got := fmt.Sprint(addrsOf(m)); got != "[198.51.100.1 198.51.100.2 198.51.100.3 198.51.100.4]" {
		t.Fatalf("addresses %s, want the first 4", got)
	}
	for _, a := range addrsOf(m) {
		if !e.allow.allowedAt(netip.MustParseAddr(a), time.Now()) {
			t.Errorf("%s answered but not allowed", a)
		}
	}
	if len(e.allow.revoked) != 0 {
		t.Errorf("revoked %v", e.allow.revoked)
	}
}
