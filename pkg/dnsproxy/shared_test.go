package dnsproxy

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/policy"
	"github.com/sluice-dev/sluice/pkg/testutil"
)

// sharedSandbox is one sandbox behind the shared socket, with its fakes.
type sharedSandbox struct {
	sb      *Sandbox
	allow   *allowRec
	ev      *events
	origins *originRec
}

func newSharedSandbox(t *testing.T, name string, tp testPolicy) *sharedSandbox {
	pol := tp.build(t)
	s := &sharedSandbox{allow: &allowRec{}, ev: &events{testutil.NewAuditRecorder()}, origins: &originRec{}}
	s.sb = &Sandbox{Name: name, Policy: func() *policy.Policy { return pol }, Allow: s.allow, Audit: s.ev, Origins: s.origins}
	return s
}

// ask sends q from c and returns the answer.
func ask(t *testing.T, c net.Conn, q *dns.Msg) *dns.Msg {
	t.Helper()
	if _, err := c.Write(pack(t, q)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(testutil.WaitTimeout))
	buf := make([]byte, 65535)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("%s: %v", q.Question[0].Name, err)
	}
	return unpack(t, buf[:n])
}

// TestServeShared: one socket serves two sandboxes, each under its own
// policy, told apart by the client address find maps; a client find does
// not know gets no answer and its query reaches no upstream.
func TestServeShared(t *testing.T) {
	up := startUpstream(t, zone(
		"a.example. 300 IN A 192.0.2.1",
		"b.example. 300 IN A 192.0.2.2",
		"both.example. 300 IN A 192.0.2.3"))
	r, err := New(Config{Upstreams: []string{up.addr}}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	sbA := newSharedSandbox(t, "a", newTestPolicy("a.example", "both.example"))
	sbB := newSharedSandbox(t, "b", newTestPolicy("b.example", "both.example"))
	pc, err := net.ListenPacket("udp", "[::1]:0")
	if err != nil {
		testutil.KernelLacks(t, "no ::1 to listen on: %v", err)
	}
	dial := func() net.Conn {
		c, err := net.Dial("udp", pc.LocalAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	cA, cB, cNone := dial(), dial(), dial()
	clientOf := func(c net.Conn) netip.AddrPort { return netip.MustParseAddrPort(c.LocalAddr().String()) }
	owners := map[netip.AddrPort]*Sandbox{clientOf(cA): sbA.sb, clientOf(cB): sbB.sb}
	find := func(client netip.AddrPort) *Sandbox { return owners[client] } // read-only once serving
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.ServeShared(ctx, pc, find) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeShared: %v", err)
		}
	}()

	tests := []struct {
		client    net.Conn
		name      string
		wantRcode int
		wantAddr  string
	}{
		{cA, "a.example.", dns.RcodeSuccess, "192.0.2.1"},
		{cB, "a.example.", dns.RcodeNameError, ""},
		{cB, "b.example.", dns.RcodeSuccess, "192.0.2.2"},
		{cA, "b.example.", dns.RcodeNameError, ""},
		// Again: by now normally answered from the sandbox's template.
		{cA, "a.example.", dns.RcodeSuccess, "192.0.2.1"},
	}
	for i, tt := range tests {
		m := ask(t, tt.client, question(uint16(i+1), tt.name, dns.TypeA))
		if m.Id != uint16(i+1) || m.Rcode != tt.wantRcode {
			t.Fatalf("query %d (%s): answer %v", i, tt.name, m)
		}
		if got := addrsOf(m); tt.wantAddr != "" && (len(got) != 1 || got[0] != tt.wantAddr) {
			t.Fatalf("query %d (%s): addresses %v, want %s", i, tt.name, got, tt.wantAddr)
		}
	}
	now := time.Now()
	if !sbA.allow.allowedAt(netip.MustParseAddr("192.0.2.1"), now) || sbA.allow.allowedAt(netip.MustParseAddr("192.0.2.2"), now) {
		t.Error("sandbox a: wrong allowlist")
	}
	if !sbB.allow.allowedAt(netip.MustParseAddr("192.0.2.2"), now) || sbB.allow.allowedAt(netip.MustParseAddr("192.0.2.1"), now) {
		t.Error("sandbox b: wrong allowlist")
	}
	evA := sbA.ev.Wait(t, "a's events", func(evs []audit.Event) bool { return len(evs) >= 3 })
	evB := sbB.ev.Wait(t, "b's events", func(evs []audit.Event) bool { return len(evs) >= 2 })
	for _, c := range []struct {
		evs  []audit.Event
		want []string
	}{
		{evA, []string{"a.example allow", "b.example deny", "a.example allow"}},
		{evB, []string{"a.example deny", "b.example allow"}},
	} {
		if len(c.evs) != len(c.want) {
			t.Fatalf("events %+v, want %v", c.evs, c.want)
		}
		// A slow-path answer is written before its event, so the client's
		// next query can be audited first: compare the events as a set.
		var got []string
		for _, ev := range c.evs {
			got = append(got, ev.QName+" "+ev.Decision)
			if ev.PID != 7 {
				t.Errorf("event %+v: pid %d, want 7", ev, ev.PID)
			}
		}
		sort.Strings(got)
		sort.Strings(c.want)
		if !slices.Equal(got, c.want) {
			t.Errorf("events %v, want %v", got, c.want)
		}
	}
	for _, s := range []struct {
		o *originRec
		c net.Conn
	}{{sbA.origins, cA}, {sbB.origins, cB}} {
		for i, client := range s.o.all() {
			if client != clientOf(s.c) || s.o.tcpAsked()[i] {
				t.Errorf("origin asked for %v tcp=%v, want %v over udp", client, s.o.tcpAsked()[i], clientOf(s.c))
			}
		}
	}

	// The unknown client asks for a name both sandboxes may resolve; then
	// a known client asks, so once it has its answer the reader has dealt
	// with the unknown client's query (one reader, loopback delivers in
	// order).
	if _, err := cNone.Write(pack(t, question(77, "both.example.", dns.TypeA))); err != nil {
		t.Fatal(err)
	}
	if m := ask(t, cA, question(78, "a.example.", dns.TypeA)); m.Id != 78 {
		t.Fatalf("answer %v", m)
	}
	if n := r.Unclaimed(); n != 1 {
		t.Fatalf("Unclaimed() = %d, want 1", n)
	}
	if up.saw("both.example") {
		t.Fatal("the unknown client's query reached the upstream")
	}
	cNone.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := cNone.Read(make([]byte, 512)); !isTimeout(err) {
		t.Fatalf("the unknown client got %d bytes (err %v), want nothing", n, err)
	}
	for _, ev := range append(sbA.ev.all(), sbB.ev.all()...) {
		if ev.QName == "both.example" {
			t.Errorf("event for the unknown client's query: %+v", ev)
		}
	}
}

// TestServeSharedEnds: ServeShared closes pc and returns nil when ctx ends,
// and refuses to run without find.
func TestServeSharedEnds(t *testing.T) {
	r, err := New(Config{Upstreams: []string{"127.0.0.1:1"}}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.ServeShared(context.Background(), pc, nil); err == nil {
		t.Fatal("ServeShared ran without find")
	}
	if _, err := pc.WriteTo([]byte{0}, pc.LocalAddr()); err == nil {
		t.Fatal("pc left open")
	}
	pc, err = net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.ServeShared(ctx, pc, func(netip.AddrPort) *Sandbox { return nil }) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("ServeShared: %v", err)
		}
	case <-time.After(testutil.WaitTimeout):
		t.Fatal("ServeShared kept running after ctx ended")
	}
	if _, err := pc.WriteTo([]byte{0}, pc.LocalAddr()); err == nil {
		t.Fatal("pc left open")
	}
}
