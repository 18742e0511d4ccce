package proxy

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/fence"
	"github.com/sluice-dev/sluice/pkg/policy"
)

// countingOrig is the env's original-destination table, counting lookups.
type countingOrig struct {
	*fakeOrig
	calls atomic.Int64
}

func (o *countingOrig) OriginalDst(client netip.AddrPort) (Origin, error) {
	o.calls.Add(1)
	return o.fakeOrig.OriginalDst(client)
}

// withDialCount counts the proxy's upstream dials in n.
func withDialCount(n *atomic.Int64) envOpt {
	return func(_ *env, c *Config) {
		c.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			n.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}
	}
}

func withDNS(h func(ctx context.Context, c net.Conn)) envOpt {
	return func(e *env, _ *Config) { e.sb.DNS = h }
}

// newEcho starts a loopback TCP echo server; accepted counts its
// connections and got the bytes it received.
func newEcho(t *testing.T) (dst netip.AddrPort, accepted, got *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted, got = new(atomic.Int64), new(atomic.Int64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() {
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					got.Add(int64(n))
					if n > 0 {
						c.Write(buf[:n])
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String()), accepted, got
}

// ownListener is a listener of the test's (as the daemon's shared one):
// accept returns the proxy's end of a new client connection.
type ownListener struct {
	t  *testing.T
	ln net.Listener
}

func newOwnListener(t *testing.T) *ownListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return &ownListener{t: t, ln: ln}
}

// pair dials the listener and accepts: the client end and the server end.
func (l *ownListener) pair() (client, server net.Conn) {
	l.t.Helper()
	client, err := net.Dial("tcp", l.ln.Addr().String())
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { client.Close() })
	server, err = l.ln.Accept()
	if err != nil {
		l.t.Fatal(err)
	}
	client.SetDeadline(time.Now().Add(10 * time.Second))
	return client, server
}

// ping writes a line and reads it back through the proxy.
func ping(t *testing.T, c net.Conn) {
	t.Helper()
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "ping\n" {
		t.Fatalf("echo through the proxy: %q, %v", line, err)
	}
}

// wantClosed asserts that the proxy closed c: the client reads EOF or a
// reset, not a timeout.
func wantClosed(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := c.Read(make([]byte, 64))
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("client read %d bytes, %v; want EOF or reset", n, err)
	}
}

// serverOf is a Server for the env's sandbox whose Orig counts lookups.
func serverOf(ctx context.Context, t *testing.T, e *env) (*Server, *countingOrig) {
	t.Helper()
	sb := *e.sb
	co := &countingOrig{fakeOrig: e.orig}
	sb.Orig = co
	srv, err := e.p.NewServer(ctx, &sb)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return srv, co
}

func echoPolicy(echo netip.AddrPort) string {
	return fmt.Sprintf("version: 1\nrules:\n  - {name: echo, cidrs: [127.0.0.1/32], ports: [%d]}\n", echo.Port())
}

// TestServeConnGivenOrigin: a connection accepted by the caller and served
// with its origin is spliced to that destination, without asking Orig; the
// connection event names the given origin.
func TestServeConnGivenOrigin(t *testing.T) {
	t.Parallel()
	echo, _, got := newEcho(t)
	var dials atomic.Int64
	e := newEnv(t, echoPolicy(echo), withDialCount(&dials))
	srv, co := serverOf(context.Background(), t, e)
	own := newOwnListener(t)
	client, c := own.pair()
	srv.ServeConn(c, &Origin{Dst: echo, PID: 4242, Comm: "given", CgroupID: 7})
	ping(t, client)
	if got.Load() != int64(len("ping\n")) {
		t.Fatalf("upstream received %d bytes, want 5", got.Load())
	}
	client.Close()
	ev := e.rec.waitKind(t, audit.KindConn, 1)
	if len(ev) != 1 || ev[0].Dst != echo.String() || ev[0].PID != 4242 || ev[0].Comm != "given" || ev[0].Decision != audit.DecisionSplice {
		t.Fatalf("connection events %+v, want one splice to %s by pid 4242", ev, echo)
	}
	if n := co.calls.Load(); n != 0 {
		t.Fatalf("Orig asked %d times for a connection served with its origin", n)
	}
	if n := dials.Load(); n != 1 {
		t.Fatalf("%d upstream dials, want 1", n)
	}
}

// TestServerCloseAndServeConnAfter: one Server fed by two listeners and by
// ServeConn; Close closes every open connection (spliced, and waiting in
// the peek), ends both Serve calls and returns. A connection given after
// Close, or after the server's context ended, is closed at once and
// nothing reaches an upstream.
func TestServerCloseAndServeConnAfter(t *testing.T) {
	t.Parallel()
	echo, accepted, got := newEcho(t)
	var dials atomic.Int64
	patient := func(_ *env, c *Config) { c.FirstByteTimeout, c.PeekTimeout = time.Minute, time.Minute }
	e := newEnv(t, echoPolicy(echo), withDialCount(&dials), patient)
	srv, co := serverOf(context.Background(), t, e)

	var served [2]chan error
	var lns [2]net.Listener
	for i := range lns {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns[i], served[i] = ln, make(chan error, 1)
		go func() { served[i] <- srv.Serve(ln) }()
	}
	dialVia := func(ln net.Listener) net.Conn {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		e.orig.set(netip.MustParseAddrPort(c.LocalAddr().String()), echo)
		return c
	}
	a, b := dialVia(lns[0]), dialVia(lns[1])
	ping(t, a)
	ping(t, b)
	own := newOwnListener(t)
	spliced, c := own.pair()
	srv.ServeConn(c, &Origin{Dst: echo, PID: 42})
	ping(t, spliced)
	idle, c := own.pair() // sends nothing: waits in the peek
	srv.ServeConn(c, &Origin{Dst: echo, PID: 42})
	if n := co.calls.Load(); n != 2 {
		t.Fatalf("Orig asked %d times, want 2 (the listeners' connections)", n)
	}

	closed := make(chan struct{})
	go func() { srv.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	for _, c := range []net.Conn{a, b, spliced, idle} {
		wantClosed(t, c)
	}
	for i, ch := range served {
		select {
		case err := <-ch:
			if err != nil {
				t.Errorf("Serve %d: %v", i, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("Serve %d did not return after Close", i)
		}
	}
	srv.Close() // idempotent

	acc, bytes, d := accepted.Load(), got.Load(), dials.Load()
	late, c := own.pair()
	io.WriteString(late, "ping\n")
	srv.ServeConn(c, &Origin{Dst: echo, PID: 42})
	wantClosed(t, late)

	// The end of the server's context closes a connection given after it
	// too, before Close.
	ctx, cancel := context.WithCancel(context.Background())
	srv2, _ := serverOf(ctx, t, e)
	cancel()
	late2, c := own.pair()
	io.WriteString(late2, "ping\n")
	srv2.ServeConn(c, &Origin{Dst: echo, PID: 42})
	wantClosed(t, late2)
	srv2.Close()

	if accepted.Load() != acc || got.Load() != bytes || dials.Load() != d {
		t.Fatalf("after Close: upstream accepted %d more, received %d more bytes; %d more dials",
			accepted.Load()-acc, got.Load()-bytes, dials.Load()-d)
	}
}

// dnsMsg frames p as DNS over TCP does (two bytes of length).
func dnsMsg(p string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(p))), p...)
}

func readDNSMsg(r io.Reader) (string, error) {
	var n [2]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return "", err
	}
	b := make([]byte, binary.BigEndian.Uint16(n[:]))
	_, err := io.ReadFull(r, b)
	return string(b), err
}

// dnsPolicy would splice 192.0.2.0/24 port 53: a connection there that is
// not handed to the resolver dials.
const dnsPolicy = "version: 1\nrules:\n  - {name: dns, cidrs: [192.0.2.0/24], ports: [53]}\n"

// TestDNSOverTCPHandedToResolver: a connection to port 53 reaches
// Sandbox.DNS unread, with its origin in the context and its fence slot
// held until DNS returns; the proxy then closes it, dials nothing and
// records no connection event.
func TestDNSOverTCPHandedToResolver(t *testing.T) {
	t.Parallel()
	type seen struct {
		orig  Origin
		ok    bool
		conns int64
	}
	saw := make(chan seen, 1)
	lim := policy.Limits{Connections: 10, UpstreamConnections: 10, RequestHeadBytes: 1 << 20, DNSQPS: 10}
	f := fence.New(func() policy.Limits { return lim }, func(fence.Refusal) {})
	hook := func(ctx context.Context, c net.Conn) {
		q, err := readDNSMsg(c)
		if err != nil {
			return
		}
		o, ok := OriginFromContext(ctx)
		saw <- seen{o, ok, f.Usage().Connections}
		c.Write(dnsMsg("answer to " + q))
	}
	var dials atomic.Int64
	withF := func(e *env, _ *Config) { e.sb.Fence = f }
	e := newEnv(t, dnsPolicy, withDNS(hook), withDialCount(&dials), withF)
	dst := netip.MustParseAddrPort("192.0.2.1:53")
	c, err := e.dial(context.Background(), dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write(dnsMsg("example.com A"))
	a, err := readDNSMsg(c)
	if err != nil || a != "answer to example.com A" {
		t.Fatalf("answer %q, %v", a, err)
	}
	s := <-saw
	if !s.ok || s.orig.Dst != dst || s.orig.PID != 42 || s.orig.Comm != "testclient" {
		t.Fatalf("origin in DNS's context: %+v %v", s.orig, s.ok)
	}
	if s.conns != 1 {
		t.Fatalf("%d connection slots held while DNS runs, want 1", s.conns)
	}
	wantClosed(t, c)
	waitFor(t, "the slot given back", func() bool { return f.Usage().Connections == 0 })
	if n := dials.Load(); n != 0 {
		t.Fatalf("%d upstream dials for DNS over TCP", n)
	}
	if ev := e.rec.kind(audit.KindConn); len(ev) != 0 {
		t.Fatalf("connection events for DNS over TCP: %+v", ev)
	}
}

// TestDNSOverTCPClosedWithServer: a connection to port 53 given with its
// origin reaches DNS; Close closes it while DNS reads and waits for DNS.
func TestDNSOverTCPClosedWithServer(t *testing.T) {
	t.Parallel()
	started, ended := make(chan struct{}), make(chan error, 1)
	hook := func(ctx context.Context, c net.Conn) {
		close(started)
		_, err := c.Read(make([]byte, 1))
		ended <- err
	}
	e := newEnv(t, dnsPolicy, withDNS(hook))
	srv, co := serverOf(context.Background(), t, e)
	own := newOwnListener(t)
	client, c := own.pair()
	srv.ServeConn(c, &Origin{Dst: netip.MustParseAddrPort("192.0.2.1:53"), PID: 42})
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("DNS not called")
	}
	srv.Close()
	select {
	case err := <-ended:
		if err == nil {
			t.Fatal("DNS read a byte nobody sent")
		}
	default:
		t.Fatal("Close returned before DNS")
	}
	wantClosed(t, client)
	if n := co.calls.Load(); n != 0 {
		t.Fatalf("Orig asked %d times", n)
	}
}

// TestDNSOverTCPWithoutResolver: without Sandbox.DNS a connection to port
// 53 is closed and recorded as denied, although the policy would splice its
// address: nothing is dialed.
func TestDNSOverTCPWithoutResolver(t *testing.T) {
	t.Parallel()
	var dials atomic.Int64
	e := newEnv(t, dnsPolicy, withDialCount(&dials))
	dst := netip.MustParseAddrPort("192.0.2.1:53")
	c, err := e.dial(context.Background(), dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(dnsMsg("example.com A"))
	wantClosed(t, c)
	ev := e.rec.waitKind(t, audit.KindConn, 1)
	if len(ev) != 1 || ev[0].Decision != audit.DecisionDeny || ev[0].Dst != dst.String() || !strings.Contains(ev[0].Reason, "DNS") {
		t.Fatalf("connection events %+v, want one denial of DNS over TCP to %s", ev, dst)
	}
	if n := dials.Load(); n != 0 {
		t.Fatalf("%d upstream dials", n)
	}
}

// TestServeConnPastFence: a connection given with its origin past the
// connections fence is refused with that origin, without asking Orig.
func TestServeConnPastFence(t *testing.T) {
	t.Parallel()
	echo, accepted, _ := newEcho(t)
	rec := &fenceRecorder{}
	lim := policy.Limits{Connections: 1, UpstreamConnections: 10, RequestHeadBytes: 1 << 20, DNSQPS: 10}
	e := newEnv(t, echoPolicy(echo), withFence(lim, rec))
	srv, co := serverOf(context.Background(), t, e)
	own := newOwnListener(t)
	held, c := own.pair()
	srv.ServeConn(c, &Origin{Dst: echo, PID: 42})
	ping(t, held)
	past, c := own.pair()
	srv.ServeConn(c, &Origin{Dst: echo, PID: 42})
	wantClosed(t, past)
	rec.mu.Lock()
	rs := append([]fence.Refusal(nil), rec.rs...)
	rec.mu.Unlock()
	if len(rs) != 1 || rs[0].Kind != fence.Connections || rs[0].Dst != echo {
		t.Fatalf("refusals %+v, want one at the connections fence for %s", rs, echo)
	}
	if n := co.calls.Load(); n != 0 {
		t.Fatalf("Orig asked %d times", n)
	}
	if n := accepted.Load(); n != 1 {
		t.Fatalf("upstream accepted %d connections, want 1", n)
	}
}
