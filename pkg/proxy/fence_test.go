package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/fence"
	"github.com/sluice-dev/sluice/pkg/policy"
)

type fenceRecorder struct {
	mu sync.Mutex
	rs []fence.Refusal
}

func (f *fenceRecorder) add(r fence.Refusal) { f.mu.Lock(); f.rs = append(f.rs, r); f.mu.Unlock() }

func (f *fenceRecorder) count(k fence.Kind) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, r := range f.rs {
		if r.Kind == k {
			n++
		}
	}
	return n
}

func withFence(lim policy.Limits, rec *fenceRecorder) envOpt {
	return func(e *env, _ *Config) {
		e.sb.Fence = fence.New(func() policy.Limits { return lim }, rec.add)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestConnectionsFence: past the sandbox's connections fence an accepted
// connection is closed at once and reported; a slot given back is
// reusable; an upstream_connections fence refuses the splice.
func TestConnectionsFence(t *testing.T) {
	t.Parallel()
	echoLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { echoLn.Close() })
	go func() {
		for {
			c, err := echoLn.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	echo := netip.MustParseAddrPort(echoLn.Addr().String())
	rec := &fenceRecorder{}
	lim := policy.Limits{Connections: 3, UpstreamConnections: 2, RequestHeadBytes: 1 << 20, DNSQPS: 10}
	// The idle connection below must stay in the peek for as long as the
	// test needs it: with the env's 100 ms first-byte timeout a loaded
	// machine let it be spliced by address (and refused at the upstream
	// fence) before the fourth connection came.
	patient := func(_ *env, c *Config) { c.FirstByteTimeout, c.PeekTimeout = time.Minute, time.Minute }
	e := newEnv(t, fmt.Sprintf("version: 1\nrules:\n  - {name: echo, cidrs: [127.0.0.1/32], ports: [%d]}\n", echo.Port()), withFence(lim, rec), patient)
	open := func() (net.Conn, string) {
		c, err := e.dial(context.Background(), echo)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "ping\n")
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return c, "error"
		}
		return c, line
	}
	var held []net.Conn
	for i := 0; i < 2; i++ {
		c, got := open()
		if got != "ping\n" {
			t.Fatalf("connection %d: %q", i, got)
		}
		held = append(held, c)
	}
	// The third is accepted (connections 3) but its splice needs a third
	// upstream connection: refused.
	c3, got := open()
	if got != "error" {
		t.Fatalf("third connection past the upstream fence: %q", got)
	}
	c3.Close()
	waitFor(t, "the upstream refusal", func() bool { return rec.count(fence.UpstreamConnections) == 1 })
	// The third's slot must be given back before the idle one comes, or
	// that one is refused in its place (and Usage reads 3 meanwhile).
	waitFor(t, "the third connection's slot given back", func() bool { return e.sb.Fence.Usage().Connections == 2 })
	// Hold a third client connection without data (it waits in the peek),
	// then a fourth is past the connections fence.
	idle, err := e.dial(context.Background(), echo)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	waitFor(t, "three connections held", func() bool { return e.sb.Fence.Usage().Connections == 3 })
	c4, got := open()
	c4.Close()
	if got != "error" {
		t.Fatalf("fourth connection past the connections fence: %q", got)
	}
	waitFor(t, "the connections refusal", func() bool { return rec.count(fence.Connections) == 1 })
	rec.mu.Lock()
	for _, r := range rec.rs {
		if r.Kind == fence.Connections && (r.Dst != echo || r.Limit != 3) {
			t.Errorf("refusal %+v, want dst %s limit 3", r, echo)
		}
	}
	rec.mu.Unlock()
	// Give slots back: new connections work again.
	held[0].Close()
	idle.Close()
	waitFor(t, "slots given back", func() bool { return e.sb.Fence.Usage().Connections <= 1 })
	c5, got := open()
	defer c5.Close()
	if got != "ping\n" {
		t.Fatalf("connection after release: %q", got)
	}
	held[1].Close()
}

// TestRequestHeadFence: unfinished request heads are charged to the
// sandbox; the head that would pass the fence is refused (431) while the
// others stay, and the bytes come back when heads complete.
func TestRequestHeadFence(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	dst := addrPort(t, up.Listener.Addr().String())
	rec := &fenceRecorder{}
	lim := policy.Limits{Connections: 100, UpstreamConnections: 100, RequestHeadBytes: 100 << 10, DNSQPS: 10}
	e := newEnv(t, fmt.Sprintf("version: 1\nrules:\n  - {name: web, hosts: [web.test], ports: [%d], paths: [\"/**\"]}\n", dst.Port()), withFence(lim, rec))
	e.bind("web.test", dst)
	start := func() *tls.Conn {
		raw, err := e.dial(context.Background(), dst)
		if err != nil {
			t.Fatal(err)
		}
		c := tls.Client(raw, &tls.Config{ServerName: "web.test", RootCAs: e.sandbox, NextProtos: []string{"http/1.1"}})
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if err := c.Handshake(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	pad := strings.Repeat("a", 40<<10)
	head := "GET /x HTTP/1.1\r\nHost: web.test\r\nX-Pad: " + pad
	a, b := start(), start()
	io.WriteString(a, head)
	io.WriteString(b, head)
	waitFor(t, "two unfinished heads charged", func() bool { return e.sb.Fence.Usage().RequestHeadBytes >= 80<<10 })
	c := start()
	io.WriteString(c, head)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("the head past the fence: %v", err)
	}
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("the head past the fence: status %d", resp.StatusCode)
	}
	if rec.count(fence.RequestHeadBytes) != 1 {
		t.Fatalf("%d head refusals, want 1", rec.count(fence.RequestHeadBytes))
	}
	if u := e.sb.Fence.Usage().RequestHeadBytes; u > lim.RequestHeadBytes {
		t.Fatalf("%d head bytes held, fence %d", u, lim.RequestHeadBytes)
	}
	// The first two complete their heads: served, and the bytes return.
	for _, conn := range []*tls.Conn{a, b} {
		io.WriteString(conn, "\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("completed head: %v %v", resp, err)
		}
	}
	waitFor(t, "head bytes given back", func() bool { return e.sb.Fence.Usage().RequestHeadBytes == 0 })
}
