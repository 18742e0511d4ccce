package enforcer

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/sluice-dev/sluice/pkg/cgroup"
	"github.com/sluice-dev/sluice/pkg/testutil"
)

func TestMain(m *testing.M) {
	testutil.MaybeRunProbe()
	os.Exit(m.Run())
}

// fixture is a sandbox cgroup with the programs attached and a fake proxy
// listener on 127.0.0.1 and ::1 that records original destinations.
type fixture struct {
	e      *Enforcer
	sb     *Sandbox
	cg     string
	origin chan Origin
}

// openTestEnforcer opens an enforcer on a private bpffs pin directory,
// closed when the test ends; it skips without the privileges eBPF needs.
func openTestEnforcer(t *testing.T) *Enforcer {
	t.Helper()
	testutil.RequirePrivileged(t)
	e, err := Open(Config{PinDir: testutil.PinDir(t)}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func setup(t *testing.T, audit bool) *fixture {
	t.Helper()
	e := openTestEnforcer(t)
	cg, id := testutil.Cgroup(t)

	ln4, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln4.Close() })
	port := uint16(ln4.Addr().(*net.TCPAddr).Port)
	ln6, err := net.Listen("tcp6", net.JoinHostPort("::1", itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln6.Close() })

	sb, err := e.Attach(cg, id, SandboxConfig{ProxyPort: port, DNSPort: 1, Audit: audit})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sb.Detach() })
	f := &fixture{e: e, sb: sb, cg: cg, origin: make(chan Origin, 16)}
	fakeProxy(sb.OriginalDst, f.origin, nil, ln4, ln6)
	return f
}

// fakeProxy accepts on each listener until it closes: for every connection
// whose original destination lookup finds one, it sends the origin to
// origins and answers "proxied"; then it closes the connection. accepted,
// when set, counts the connections.
func fakeProxy(lookup func(netip.AddrPort) (Origin, error), origins chan<- Origin, accepted *atomic.Int64, lns ...net.Listener) {
	for _, ln := range lns {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				if accepted != nil {
					accepted.Add(1)
				}
				if o, err := lookup(netip.MustParseAddrPort(c.RemoteAddr().String())); err == nil {
					origins <- o
					c.Write([]byte("proxied\n"))
				}
				c.Close()
			}
		}()
	}
}

func itoa(p uint16) string { return strconv.Itoa(int(p)) }

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

func TestForbiddenDestinationsRefused(t *testing.T) {
	f := setup(t, false)
	tcp4 := testutil.TCPCanary(t, "tcp4")
	tcp6 := testutil.TCPCanary(t, "tcp6")
	udp4 := testutil.UDPCanary(t, "udp4")
	udp6 := testutil.UDPCanary(t, "udp6")
	cases := []struct {
		name, mode, target string
		canary             *testutil.Canary
	}{
		{"tcp ipv4", "tcp", tcp4.Addr, tcp4},
		{"tcp ipv4-mapped ipv6", "tcp", "[::ffff:127.0.0.1]:" + port(tcp4.Addr), tcp4},
		{"tcp ipv6", "tcp", tcp6.Addr, tcp6},
		{"tcp fast open ipv4", "tfo", tcp4.Addr, tcp4},
		{"tcp fast open ipv6", "tfo", tcp6.Addr, tcp6},
		{"udp unconnected ipv4", "udp", udp4.Addr, udp4},
		{"udp connected ipv4", "udpconn", udp4.Addr, udp4},
		{"udp ipv4-mapped", "udp", "[::ffff:127.0.0.1]:" + port(udp4.Addr), udp4},
		{"udp ipv6", "udp", udp6.Addr, udp6},
		{"udp connected ipv6", "udpconn", udp6.Addr, udp6},
		{"metadata", "tcp", "169.254.169.254:80", nil},
		{"metadata ipv6", "tcp", "[fd00:ec2::254]:80", nil},
		{"tcp with a bound source address", "bindtcp", tcp4.Addr, tcp4},
		{"tcp ipv6 with a bound source address", "bindtcp", tcp6.Addr, tcp6},
		{"ipv4-compatible ipv6", "tcp", "[::127.0.0.1]:" + port(tcp4.Addr), nil},
		{"nat64", "tcp", "[64:ff9b::7f00:1]:" + port(tcp4.Addr), nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := testutil.RunProbe(t, f.cg, c.mode, c.target)
			if got != "error EPERM" {
				t.Fatalf("probe %s %s: got %q, want error EPERM", c.mode, c.target, got)
			}
			if c.canary != nil && c.canary.Hits() != 0 {
				t.Fatalf("forbidden listener received %d connections", c.canary.Hits())
			}
		})
	}
	// QUIC: UDP to port 443 on loopback.
	if quic := quicCanary(t); quic != nil {
		if got := testutil.RunProbe(t, f.cg, "udp", quic.Addr); got != "error EPERM" {
			t.Errorf("quic (udp 443): got %q, want error EPERM", got)
		}
		if quic.Hits() != 0 {
			t.Errorf("the udp/443 listener received %d datagrams", quic.Hits())
		}
	}
	for _, mode := range []string{"raw", "mptcp"} {
		if got := testutil.RunProbe(t, f.cg, mode, "-"); got != "error EPERM" {
			t.Errorf("%s socket: got %q, want error EPERM", mode, got)
		}
	}
	// The refusals are counted.
	rows, err := ReadBlocked(f.e.PinDir())
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, r := range rows {
		if r.Sandbox == f.sb.ID() {
			n += r.Count
		}
	}
	if n < uint64(len(cases)) {
		t.Fatalf("counted %d refusals, want at least %d: %+v", n, len(cases), rows)
	}
}

func TestAllowedRedirectedWithOriginalDestination(t *testing.T) {
	f := setup(t, false)
	upstream := testutil.TCPCanary(t, "tcp4")
	dst := netip.MustParseAddrPort("127.0.0.2:" + port(upstream.Addr))
	if err := f.sb.Allow(dst.Addr(), time.Now().Add(time.Minute), false); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{dst.String(), "[::ffff:127.0.0.2]:" + port(upstream.Addr)} {
		got := testutil.RunProbe(t, f.cg, "tcp", target)
		if got != "ok proxied" {
			t.Fatalf("connect %s: got %q, want the proxy's answer", target, got)
		}
		select {
		case o := <-f.origin:
			if o.Dst != dst {
				t.Fatalf("original destination %v, want %v", o.Dst, dst)
			}
			if o.PID == 0 || o.Comm == "" {
				t.Fatalf("origin lacks pid/comm: %+v", o)
			}
		case <-time.After(3 * time.Second):
			t.Fatal("proxy never recovered the original destination")
		}
	}
	if upstream.Hits() != 0 {
		t.Fatal("the connection bypassed the proxy")
	}
	// Expired entries are refused.
	if err := f.sb.Allow(netip.MustParseAddr("127.0.0.3"), time.Now().Add(-time.Second), false); err != nil {
		t.Fatal(err)
	}
	if got := testutil.RunProbe(t, f.cg, "tcp", "127.0.0.3:"+port(upstream.Addr)); got != "error EPERM" {
		t.Fatalf("expired entry: got %q", got)
	}
}

func TestNestedCgroupEnforced(t *testing.T) {
	f := setup(t, false)
	canary := testutil.TCPCanary(t, "tcp4")
	child, err := cgroup.Create(f.cg, "inner")
	if err != nil {
		t.Fatal(err)
	}
	grandchild, err := cgroup.Create(child, "deeper")
	if err != nil {
		t.Fatal(err)
	}
	for _, cg := range []string{child, grandchild} {
		if got := testutil.RunProbe(t, cg, "tcp", canary.Addr); got != "error EPERM" {
			t.Fatalf("%s: got %q, want error EPERM", filepath.Base(cg), got)
		}
	}
	if canary.Hits() != 0 {
		t.Fatal("forbidden listener was reached from a nested cgroup")
	}
}

func TestStaticDirectRule(t *testing.T) {
	f := setup(t, false)
	up := testutil.TCPCanary(t, "tcp4")
	p := uint16(mustAtoi(t, port(up.Addr)))
	if err := f.sb.SetStatic([]Static{{Prefix: netip.MustParsePrefix("127.0.0.0/8"), Ports: []uint16{p}, Direct: true}}); err != nil {
		t.Fatal(err)
	}
	if got := testutil.RunProbe(t, f.cg, "tcp", up.Addr); got != "ok pong" {
		t.Fatalf("direct rule: got %q, want ok pong", got)
	}
	other := testutil.TCPCanary(t, "tcp4")
	if got := testutil.RunProbe(t, f.cg, "tcp", other.Addr); got != "error EPERM" {
		t.Fatalf("port outside the rule: got %q", got)
	}
	// A deny /32 inside the allowed /8 wins.
	if err := f.sb.SetStatic([]Static{
		{Prefix: netip.MustParsePrefix("127.0.0.0/8"), Ports: []uint16{p}, Direct: true},
		{Prefix: netip.MustParsePrefix("127.0.0.1/32"), Deny: true},
	}); err != nil {
		t.Fatal(err)
	}
	if got := testutil.RunProbe(t, f.cg, "tcp", up.Addr); got != "error EPERM" {
		t.Fatalf("deny inside allow: got %q", got)
	}
	if up.Hits() != 1 || other.Hits() != 0 {
		t.Fatalf("hits: allowed %d (want 1), other %d (want 0)", up.Hits(), other.Hits())
	}
}

func TestDetachLeavesNothing(t *testing.T) {
	f := setup(t, false)
	_ = f.sb.Allow(netip.MustParseAddr("127.0.0.9"), time.Now().Add(time.Minute), false)
	testutil.RunProbe(t, f.cg, "tcp", "127.0.0.1:9") // one refusal counted
	if err := f.sb.Detach(); err != nil {
		t.Fatal(err)
	}
	if f.e.Registered(f.sb.ID()) {
		t.Fatal("still registered")
	}
	if _, err := os.Stat(f.e.linkDir(f.sb.ID())); !os.IsNotExist(err) {
		t.Fatalf("link pins left behind: %v", err)
	}
	if n := f.e.AllowCount(); n != 0 {
		t.Fatalf("%d allowlist entries left", n)
	}
	rows, _ := ReadBlocked(f.e.PinDir())
	for _, r := range rows {
		if r.Sandbox == f.sb.ID() {
			t.Fatalf("counter left: %+v", r)
		}
	}
	// With the links gone the cgroup is unrestricted again.
	up := testutil.TCPCanary(t, "tcp4")
	if got := testutil.RunProbe(t, f.cg, "tcp", up.Addr); got != "ok pong" {
		t.Fatalf("after detach: %q", got)
	}
}

func mustAtoi(t *testing.T, s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// quicCanary listens on 127.0.0.1:443/udp (tests run as root); nil when the
// port is taken.
func quicCanary(t *testing.T) *testutil.Canary {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:443")
	if err != nil {
		t.Logf("udp 127.0.0.1:443 unavailable (%v): QUIC case uses a random port", err)
		return testutil.UDPCanary(t, "udp4")
	}
	pc.Close()
	c := &testutil.Canary{}
	return testutil.UDPCanaryAt(t, "127.0.0.1:443", c)
}

func TestSandboxTableFull(t *testing.T) {
	f := setup(t, false)
	// Fill the table with ids no cgroup has, then attach one more.
	var added []uint64
	t.Cleanup(func() {
		for _, id := range added {
			f.e.objs.Sandboxes.Delete(id)
		}
	})
	for id := uint64(1 << 40); ; id++ {
		if err := f.e.objs.Sandboxes.Update(id, sluiceSandboxCfg{}, 0); err != nil {
			break
		}
		added = append(added, id)
	}
	cg, id := testutil.Cgroup(t)
	_, err := f.e.Attach(cg, id, SandboxConfig{ProxyPort: 1, DNSPort: 1})
	if !errors.Is(err, ErrSandboxTableFull) {
		t.Fatalf("attach on a full table: %v, want ErrSandboxTableFull", err)
	}
	if !strings.Contains(err.Error(), "detach unused sandboxes") {
		t.Fatalf("error does not say what to do: %v", err)
	}
	// Enforcement of the existing sandbox did not degrade.
	canary := testutil.TCPCanary(t, "tcp4")
	if got := testutil.RunProbe(t, f.cg, "tcp", canary.Addr); got != "error EPERM" {
		t.Fatalf("existing sandbox after a refused attach: %q", got)
	}
	// And the refused cgroup has nothing attached: it is not a sandbox.
	if f.e.Registered(id) {
		t.Fatal("the refused cgroup is registered")
	}
}

func TestOpenReplacesIncompatibleUnusedPins(t *testing.T) {
	testutil.RequirePrivileged(t)
	dir := testutil.PinDir(t)
	if err := os.MkdirAll(filepath.Join(dir, "maps"), 0o700); err != nil {
		t.Fatal(err)
	}
	// A "counters" map of another layout, as an older build left it.
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "counters", Type: ebpf.Hash, KeySize: 8, ValueSize: 8, MaxEntries: 4})
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Pin(filepath.Join(dir, "maps", "counters")); err != nil {
		t.Fatal(err)
	}
	old.Close()
	e, err := Open(Config{PinDir: dir}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("open over unused incompatible pins: %v", err)
	}
	e.Close()
}

func TestDNSOriginOfUDPQueries(t *testing.T) {
	e := openTestEnforcer(t)
	cg, id := testutil.Cgroup(t)
	resolver, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer resolver.Close()
	dnsPort := uint16(resolver.LocalAddr().(*net.UDPAddr).Port)
	sb, err := e.Attach(cg, id, SandboxConfig{ProxyPort: 1, DNSPort: dnsPort})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Detach()
	for _, mode := range []string{"udp", "udpconn"} { // unconnected and connected sockets
		if got := testutil.RunProbe(t, cg, mode, "127.0.0.1:53"); got != "ok sent" {
			t.Fatalf("%s to port 53: %q", mode, got)
		}
		resolver.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 512)
		_, from, err := resolver.ReadFrom(buf)
		if err != nil {
			t.Fatalf("%s: the query did not reach the resolver: %v", mode, err)
		}
		o, ok := sb.DNSOrigin(uint16(from.(*net.UDPAddr).Port))
		if !ok || o.PID == 0 || o.Comm == "" || o.Dst.Port() != 53 {
			t.Fatalf("%s: origin %+v, %v", mode, o, ok)
		}
	}
}
