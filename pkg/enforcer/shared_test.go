package enforcer

import (
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/testutil"
)

// sharedFixture is two sandboxes with SandboxConfig.Shared on one proxy
// listener pair (127.0.0.1:P, [::1]:P) and one UDP socket on [::1]:P, the
// daemon's shared listeners in the host network namespace.
type sharedFixture struct {
	e        *Enforcer
	cgs      [2]string
	sbs      [2]*Sandbox
	port     uint16
	origins  chan Origin // from the TCP listeners, via SharedOriginalDst
	accepted atomic.Int64
	udp6     net.PacketConn
}

func setupShared(t *testing.T) *sharedFixture {
	t.Helper()
	e := openTestEnforcer(t)
	ln4, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln4.Close() })
	f := &sharedFixture{e: e, port: uint16(ln4.Addr().(*net.TCPAddr).Port), origins: make(chan Origin, 16)}
	ln6, err := net.Listen("tcp6", net.JoinHostPort("::1", itoa(f.port)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln6.Close() })
	if f.udp6, err = net.ListenPacket("udp6", net.JoinHostPort("::1", itoa(f.port))); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.udp6.Close() })
	for i := range f.sbs {
		cg, id := testutil.Cgroup(t)
		sb, err := e.Attach(cg, id, SandboxConfig{ProxyPort: f.port, DNSPort: 1, Shared: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sb.Detach() })
		f.cgs[i], f.sbs[i] = cg, sb
	}
	fakeProxy(e.SharedOriginalDst, f.origins, &f.accepted, ln4, ln6)
	return f
}

func (f *sharedFixture) origin(t *testing.T) Origin {
	t.Helper()
	select {
	case o := <-f.origins:
		return o
	case <-time.After(10 * time.Second):
		t.Fatal("the shared listener recovered no original destination")
		return Origin{}
	}
}

// The shared listener tells sandboxes apart by the kernel's record alone,
// TCP to port 53 reaches the proxy listener, and IPv6 UDP DNS reaches the
// shared resolver socket with the sending sandbox named (issue #21).
func TestSharedListenerNamesTheSandbox(t *testing.T) {
	f := setupShared(t)
	upstream := testutil.TCPCanary(t, "tcp4")
	dst := netip.MustParseAddrPort("127.0.0.2:" + port(upstream.Addr))
	for _, sb := range f.sbs {
		if err := sb.Allow(dst.Addr(), time.Now().Add(time.Minute), false); err != nil {
			t.Fatal(err)
		}
	}
	for round := 0; round < 2; round++ {
		for i, sb := range f.sbs {
			for _, target := range []string{dst.String(), "[::ffff:127.0.0.2]:" + port(upstream.Addr)} {
				if got := testutil.RunProbe(t, f.cgs[i], "tcp", target); got != "ok proxied" {
					t.Fatalf("sandbox %d connect %s: got %q, want the shared proxy's answer", i, target, got)
				}
				o := f.origin(t)
				if o.Sandbox != sb.ID() || o.Dst != dst || o.PID == 0 {
					t.Fatalf("sandbox %d: origin %+v, want sandbox %d and %v", i, o, sb.ID(), dst)
				}
			}
		}
	}
	if upstream.Hits() != 0 {
		t.Fatal("a connection bypassed the shared proxy")
	}
	// DNS over TCP, to any address, reaches the proxy listener.
	if got := testutil.RunProbe(t, f.cgs[1], "tcp", "192.0.2.1:53"); got != "ok proxied" {
		t.Fatalf("tcp to port 53: got %q, want the proxy", got)
	}
	if o := f.origin(t); o.Sandbox != f.sbs[1].ID() || o.Dst.Port() != 53 {
		t.Fatalf("tcp/53 origin %+v", o)
	}
	// IPv6 UDP DNS: the shared socket on [::1]:P, the sender named by
	// SharedDNSOrigin; each sandbox's per-sandbox lookup sees only its own.
	for i, sb := range f.sbs {
		for _, mode := range []string{"udp", "udpconn"} {
			if got := testutil.RunProbe(t, f.cgs[i], mode, "[2001:db8::53]:53"); got != "ok sent" {
				t.Fatalf("sandbox %d %s to [2001:db8::53]:53: %q", i, mode, got)
			}
			f.udp6.SetReadDeadline(time.Now().Add(10 * time.Second))
			buf := make([]byte, 512)
			_, from, err := f.udp6.ReadFrom(buf)
			if err != nil {
				t.Fatalf("sandbox %d %s: the query did not reach the shared socket: %v", i, mode, err)
			}
			p := uint16(from.(*net.UDPAddr).Port)
			o, ok := f.e.SharedDNSOrigin(p)
			if !ok || o.Sandbox != sb.ID() || o.Dst.Port() != 53 || o.PID == 0 {
				t.Fatalf("sandbox %d %s: shared origin %+v, %v", i, mode, o, ok)
			}
			if _, ok := sb.DNSOrigin(p); !ok {
				t.Fatalf("sandbox %d: its own DNSOrigin misses its query", i)
			}
			if _, ok := f.sbs[1-i].DNSOrigin(p); ok {
				t.Fatalf("sandbox %d's query is attributed to the other sandbox too", i)
			}
		}
	}
}

// A connect or send straight to sluice's own listeners, not redirected by a
// program, is refused even where a direct rule admits loopback: it would
// reach the proxy with no record of its own, or with a stale one another
// socket left on the same client port (issue #21).
func TestStraightToOwnListenerRefused(t *testing.T) {
	f := setupShared(t)
	sb := f.sbs[0]
	if err := sb.SetStatic([]Static{
		{Prefix: netip.MustParsePrefix("127.0.0.0/8"), Direct: true, UDP: true},
		{Prefix: netip.MustParsePrefix("::1/128"), Direct: true, UDP: true},
		{Prefix: netip.MustParsePrefix("0.0.0.0/32"), Direct: true, UDP: true},
		{Prefix: netip.MustParsePrefix("::/128"), Direct: true, UDP: true},
	}); err != nil {
		t.Fatal(err)
	}
	// The direct rule works for another loopback listener...
	other := testutil.TCPCanary(t, "tcp4")
	if got := testutil.RunProbe(t, f.cgs[0], "tcp", other.Addr); got == "error EPERM" {
		t.Fatalf("the direct loopback rule does not apply: %q", got)
	}
	// ...but not for the proxy and the shared resolver socket.
	p := itoa(f.port)
	for _, c := range []struct{ mode, target string }{
		{"tcp", "127.0.0.1:" + p},
		{"tcp", "[::1]:" + p},
		{"tcp", "[::ffff:127.0.0.1]:" + p},
		{"tcp", "0.0.0.0:" + p}, // the unspecified address reaches the local host
		{"tcp", "[::]:" + p},
		{"udp", "[::1]:" + p},
		{"udp", "[::]:" + p},
		{"udpconn", "[::1]:" + p},
	} {
		if got := testutil.RunProbe(t, f.cgs[0], c.mode, c.target); got != "error EPERM" {
			t.Errorf("%s %s: got %q, want error EPERM", c.mode, c.target, got)
		}
	}
	if n := f.accepted.Load(); n != 0 {
		t.Errorf("the proxy listener accepted %d connections", n)
	}
	f.udp6.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, _, err := f.udp6.ReadFrom(make([]byte, 64)); err == nil {
		t.Errorf("the shared resolver socket received %d bytes", n)
	}
	rows, err := ReadBlocked(f.e.PinDir())
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, r := range rows {
		if r.Sandbox == sb.ID() && r.Reason == reasonNamed("REASON_OWN_LISTENER") {
			n += r.Count
		}
	}
	if n < 8 {
		t.Fatalf("counted %d own-listener refusals, want 8: %+v", n, rows)
	}
}

// A record dies with a connection that never reached the proxy (refused,
// lost or reset): nobody connecting later from the same client port can be
// served under it. A client that closed gracefully while its connection
// waits in the proxy's backlog keeps its record until the proxy accepts it
// (issue #21).
func TestOriginRecordEndsWithADeadConnection(t *testing.T) {
	e := openTestEnforcer(t)
	// A proxy listener that does not accept yet.
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	proxyPort := uint16(ln.Addr().(*net.TCPAddr).Port)
	cg, id := testutil.Cgroup(t)
	sb, err := e.Attach(cg, id, SandboxConfig{ProxyPort: proxyPort, DNSPort: 1, Shared: true})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Detach()
	upstream := testutil.TCPCanary(t, "tcp4")
	if err := sb.Allow(netip.MustParseAddr("127.0.0.2"), time.Now().Add(time.Minute), false); err != nil {
		t.Fatal(err)
	}
	target := "127.0.0.2:" + port(upstream.Addr)
	records := func() int {
		n := 0
		var k sluiceOrigKey
		var o sluiceOrig
		for it := e.objs.OrigByTuple.Iterate(); it.Next(&k, &o); {
			if o.Sandbox == id {
				n++
			}
		}
		return n
	}
	// Connect and close at once: the connection waits in the backlog, the
	// client's side is closed gracefully. The proxy still gets its record.
	if got := testutil.RunProbe(t, cg, "bindtcp", target); got != "ok connected" {
		t.Fatalf("connect: %q", got)
	}
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	o, err := e.SharedOriginalDst(netip.MustParseAddrPort(c.RemoteAddr().String()))
	c.Close()
	if err != nil || o.Sandbox != id {
		t.Fatalf("a gracefully closed client's record: %+v, %v", o, err)
	}
	// Nothing listens on the proxy port: the SYN is refused, and the
	// record goes with the connection.
	ln.Close()
	if got := testutil.RunProbe(t, cg, "bindtcp", target); got != "error ECONNREFUSED" {
		t.Fatalf("connect with no proxy listening: %q", got)
	}
	testutil.WaitFor(t, "the refused connection's record to go", func() bool { return records() == 0 })
	if upstream.Hits() != 0 {
		t.Fatal("a connection bypassed the proxy")
	}
}
