package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/tlsca"
)

// The HTTP/2 front end (h2.go): streams multiplexed onto pooled upstream
// connections, the same gate, injection, redaction and errors as the
// HTTP/1.x loop, and flow control that bounds memory.

// countConns counts the TCP connections an upstream accepted.
func countConns(n *atomic.Int64) func(*http.Server) {
	return func(s *http.Server) {
		s.ConnState = func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				n.Add(1)
			}
		}
	}
}

// TestH2StreamsShareOneUpstreamConnection: concurrent streams of two HTTP/2
// client connections all reach the upstream, injected, as streams of ONE
// HTTP/2 upstream connection, even when the burst is the upstream's first
// traffic (the transport alone would dial one connection per stream until
// the first handshake said h2).
func TestH2StreamsShareOneUpstreamConnection(t *testing.T) {
	t.Parallel()
	const n = 60
	var conns, arrived atomic.Int64
	all := make(chan struct{})
	up := newUpstreamWith(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 || r.Header.Get("Authorization") != "Bearer s3cr3t-token-value" {
			http.Error(w, "bad "+r.Proto, 500)
			return
		}
		if arrived.Add(1) == n {
			close(all)
		}
		select { // every stream is in flight at the same time
		case <-all:
		case <-time.After(20 * time.Second):
			http.Error(w, "not concurrent", 500)
			return
		}
		fmt.Fprintf(w, "ok %s", r.URL.Path)
	}), countConns(&conns))
	dst := addrPort(t, up.URL)
	e := newEnv(t, fmt.Sprintf(`
version: 1
rules:
  - name: api
    hosts: [api.test]
    ports: [%d]
    paths: ["/s/*"]
    headers: [{name: Authorization, type: secret, value: "Bearer {TOKEN}"}]
`, dst.Port()))
	e.bind("api.test", dst)
	// Each client opens its one connection with a request sluice refuses
	// itself: the upstream has seen nothing before the burst.
	clients := []*http.Client{e.client(true), e.client(true)}
	for _, c := range clients {
		resp, err := c.Get(fmt.Sprintf("https://api.test:%d/warm", dst.Port()))
		if err != nil {
			t.Fatal(err)
		}
		if body := readAll(t, resp); resp.StatusCode != http.StatusForbidden || resp.ProtoMajor != 2 {
			t.Fatalf("warm: %d %s %q", resp.StatusCode, resp.Proto, body)
		}
	}
	if c := conns.Load(); c != 0 {
		t.Fatalf("the upstream accepted %d connections before the burst", c)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			resp, err := clients[i%2].Get(fmt.Sprintf("https://api.test:%d/s/%d", dst.Port(), i))
			if err != nil {
				errs <- err
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || resp.ProtoMajor != 2 || string(b) != fmt.Sprintf("ok /s/%d", i) {
				errs <- fmt.Errorf("stream %d: %d %s %q", i, resp.StatusCode, resp.Proto, b)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if c := conns.Load(); c != 1 {
		t.Fatalf("the upstream accepted %d connections for %d streams, want 1", c, n)
	}
}

// TestH2UpstreamHTTP11: an upstream without h2 gets the streams over
// pooled HTTP/1.1 connections (reused, not one per request).
func TestH2UpstreamHTTP11(t *testing.T) {
	t.Parallel()
	var conns atomic.Int64
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", r.Proto, r.Header.Get("Authorization"))
	}))
	countConns(&conns)(up.Config)
	up.TLS = upstreamCA.TLSConfig()
	up.TLS.NextProtos = []string{"http/1.1"}
	up.StartTLS()
	t.Cleanup(up.Close)
	dst := addrPort(t, up.URL)
	e := newEnv(t, apiPolicy(dst.Port()))
	e.bind("api.test", dst)
	c := e.client(true)
	for i := range 5 {
		resp, err := c.Get(fmt.Sprintf("https://api.test:%d/%d", dst.Port(), i))
		if err != nil {
			t.Fatal(err)
		}
		if body := readAll(t, resp); resp.ProtoMajor != 2 || body != "HTTP/1.1 "+Redacted {
			t.Fatalf("%s %q", resp.Proto, body)
		}
	}
	if c := conns.Load(); c != 1 {
		t.Fatalf("the upstream accepted %d connections for 5 sequential requests, want 1", c)
	}
}

// TestH2InjectAndRedact: on HTTP/2 (Go's client and curl --http2) the
// secret is injected and its echo is redacted in the header, a 103, a
// streamed body and declared and undeclared trailers; events say so.
func TestH2InjectAndRedact(t *testing.T) {
	t.Parallel()
	const secret = "s3cr3t-token-value"
	up := newUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth := r.Header.Get("Authorization")
		if auth != "Bearer "+secret || r.ProtoMajor != 2 {
			http.Error(w, "not injected", 500)
			return
		}
		w.Header().Set("X-Early", auth)
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("X-Early")
		w.Header().Set("Trailer", "X-Echo")
		w.Header().Set("X-Echo", auth)
		w.WriteHeader(200)
		for i := range 3 {
			fmt.Fprintf(w, "chunk %d %s\n", i, auth)
			w.(http.Flusher).Flush()
		}
		w.Header().Set("X-Echo", auth)
		w.Header().Set(http.TrailerPrefix+"X-Late", auth)
	}))
	dst := addrPort(t, up.URL)
	e := newEnv(t, apiPolicy(dst.Port()))
	e.bind("api.test", dst)
	url := fmt.Sprintf("https://api.test:%d/echo", dst.Port())

	var early []textproto.MIMEHeader
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			if code == http.StatusEarlyHints {
				early = append(early, h)
			}
			return nil
		},
	})
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer sandbox-fake")
	resp, err := e.client(true).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp)
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
		t.Fatalf("%d %s %q", resp.StatusCode, resp.Proto, body)
	}
	all := fmt.Sprint(resp.Header, early, body, resp.Trailer)
	if strings.Contains(all, secret) {
		t.Fatalf("the secret reached the sandbox: %s", all)
	}
	if strings.Count(body, Redacted) != 3 || !strings.Contains(resp.Header.Get("X-Echo"), Redacted) {
		t.Fatalf("body or header not redacted: %q %v", body, resp.Header)
	}
	if len(early) != 1 || !strings.Contains(early[0].Get("X-Early"), Redacted) {
		t.Fatalf("103: %v", early)
	}
	for _, k := range []string{"X-Echo", "X-Late"} {
		if !strings.Contains(resp.Trailer.Get(k), Redacted) {
			t.Fatalf("trailer %s: %v", k, resp.Trailer)
		}
	}
	secrets := e.rec.waitKind(t, audit.KindSecret, 5)
	var reasons []string
	for _, ev := range secrets {
		reasons = append(reasons, ev.Reason)
	}
	for _, want := range []string{"response header", "informational response header", "response body", "response trailer"} {
		if !strings.Contains(strings.Join(reasons, "|"), "echoed in "+want) {
			t.Errorf("no secret event for %s: %q", want, reasons)
		}
	}
	if ev := e.rec.waitKind(t, audit.KindHTTP, 1); len(ev) != 1 || ev[0].Status != 200 || len(ev[0].Injected) != 1 || ev[0].Decision != audit.DecisionAllow {
		t.Fatalf("http events %+v", ev)
	}

	if _, err := exec.LookPath("curl"); err != nil {
		t.Log("curl not installed: only Go's HTTP/2 client tested")
		return
	}
	e.orig.setFallback(dst)
	bundle := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(bundle, tlsca.Bundle(nil, e.sb.CA), 0o644); err != nil {
		t.Fatal(err)
	}
	proxyPort := addrPort(t, e.ln.Addr().String()).Port()
	cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(cctx, "curl", "-sS", "-i", "--http2", "--cacert", bundle,
		"--resolve", fmt.Sprintf("api.test:%d:127.0.0.1", proxyPort),
		fmt.Sprintf("https://api.test:%d/echo", proxyPort)).CombinedOutput()
	if err != nil {
		t.Fatalf("curl: %v: %s", err, out)
	}
	s := string(out)
	if strings.Contains(s, secret) || !strings.HasPrefix(s, "HTTP/2 103") || !strings.Contains(s, "HTTP/2 200") ||
		strings.Count(s, Redacted) < 5 || !strings.Contains(strings.ToLower(s), "x-echo: ") {
		t.Fatalf("curl --http2:\n%s", s)
	}
}

// TestH2ErrorsAsH1: a denied path, a failing upstream and an upstream that
// fails mid-body get the same status and event on HTTP/2 as on HTTP/1.1,
// and the denied request reaches the upstream as nothing.
func TestH2ErrorsAsH1(t *testing.T) {
	t.Parallel()
	var seen atomic.Int64
	up := newUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		if r.URL.Path == "/ok/cut" {
			w.Header().Set("Content-Length", "100000")
			io.WriteString(w, "partial")
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler) // the connection or stream breaks
		}
		io.WriteString(w, "fine")
	}))
	dst := addrPort(t, up.URL)
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadDst := addrPort(t, dead.Addr().String())
	dead.Close() // connection refused
	e := newEnv(t, fmt.Sprintf(`
version: 1
rules:
  - name: api
    hosts: [api.test]
    ports: [%d]
    paths: ["/ok/*"]
    headers: [{name: Authorization, type: secret, value: "Bearer {TOKEN}"}]
  - name: gone
    hosts: [gone.test]
    ports: [%d]
    headers: [{name: Authorization, type: secret, value: "Bearer {TOKEN}"}]
`, dst.Port(), deadDst.Port()))
	e.bind("api.test", dst)
	e.bind("gone.test", deadDst)

	type result struct {
		status   int
		body     string
		readErr  bool
		decision string
		evStatus int
		reason   string
	}
	run := func(h2 bool, url string) result {
		t.Helper()
		before := len(e.rec.kind(audit.KindHTTP))
		resp, err := e.client(h2).Get(url)
		if err != nil {
			t.Fatalf("h2=%v %s: %v", h2, url, err)
		}
		b, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := map[bool]int{false: 1, true: 2}[h2]; resp.ProtoMajor != want {
			t.Fatalf("%s: client spoke %s", url, resp.Proto)
		}
		ev := e.rec.waitKind(t, audit.KindHTTP, before+1)
		if len(ev) != before+1 {
			t.Fatalf("h2=%v %s: %d events, want %d", h2, url, len(ev), before+1)
		}
		last := ev[before]
		// The error's details differ by protocol (a reset stream, an
		// unexpected EOF): compare the reason up to them.
		reason, _, _ := strings.Cut(last.Reason, ": ")
		return result{resp.StatusCode, string(b), rerr != nil, last.Decision, last.Status, reason}
	}
	for _, tt := range []struct {
		name, url string
		want      int
		decision  string
	}{
		{"denied path", fmt.Sprintf("https://api.test:%d/admin", dst.Port()), http.StatusForbidden, audit.DecisionDeny},
		{"upstream down", fmt.Sprintf("https://gone.test:%d/x", deadDst.Port()), http.StatusBadGateway, audit.DecisionError},
		{"mid-body failure", fmt.Sprintf("https://api.test:%d/ok/cut", dst.Port()), http.StatusOK, audit.DecisionError},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n := seen.Load()
			h1, h2 := run(false, tt.url), run(true, tt.url)
			if h1.status != tt.want || h1.decision != tt.decision {
				t.Fatalf("h1: %+v, want status %d decision %s", h1, tt.want, tt.decision)
			}
			if h1 != h2 {
				t.Fatalf("HTTP/2 answered differently from HTTP/1.1:\nh1: %+v\nh2: %+v", h1, h2)
			}
			if tt.name == "denied path" && seen.Load() != n {
				t.Fatalf("the upstream received %d denied requests", seen.Load()-n)
			}
			if tt.name == "mid-body failure" && (!h2.readErr || !strings.Contains(h2.reason, "failed mid-body")) {
				t.Fatalf("a truncated body must fail the client's read: %+v", h2)
			}
		})
	}
}

// TestH2FlowControlBoundsMemory: an upstream sends 64 MiB to an HTTP/2
// client that stops reading after 1 MiB. Flow control stops the upstream
// well before the end (the proxy buffers no more than the windows and
// socket buffers) and the heap does not grow by the body; the client then
// reads the rest, intact.
func TestH2FlowControlBoundsMemory(t *testing.T) {
	const size = 64 << 20
	var sent atomic.Int64
	up := newUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(size))
		buf := patternBlock[:32<<10]
		for left := size; left > 0; left -= len(buf) {
			if _, err := w.Write(buf); err != nil {
				return
			}
			sent.Add(int64(len(buf)))
		}
	}))
	dst := addrPort(t, up.URL)
	e := newEnv(t, apiPolicy(dst.Port()))
	e.bind("api.test", dst)

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse

	resp, err := e.client(true).Get(fmt.Sprintf("https://api.test:%d/big", dst.Port()))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, resp.Proto)
	}
	if _, err := io.CopyN(io.Discard, resp.Body, 1<<20); err != nil {
		t.Fatal(err)
	}
	// The client stalls. Wait until the upstream is stopped: nothing more
	// sent for a while (polled, with a deadline).
	deadline := time.Now().Add(30 * time.Second)
	last, since := sent.Load(), time.Now()
	for time.Since(since) < time.Second {
		if time.Now().After(deadline) {
			t.Fatalf("the upstream never stopped sending (%d bytes)", sent.Load())
		}
		time.Sleep(20 * time.Millisecond)
		if s := sent.Load(); s != last {
			last, since = s, time.Now()
		}
	}
	runtime.ReadMemStats(&ms)
	grew := int64(ms.HeapInuse) - int64(base)
	t.Logf("stalled client: upstream sent %d MiB, heap grew %d MiB", last>>20, grew>>20)
	if last >= size*3/4 {
		t.Fatalf("the upstream sent %d of %d bytes to a client that read 1 MiB: no backpressure", last, size)
	}
	if grew > 24<<20 {
		t.Fatalf("heap grew by %d MiB while the client stalled", grew>>20)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil || n != size-1<<20 {
		t.Fatalf("rest of body: %d bytes, %v", n, err)
	}
}

// TestBatcher: concurrent writes reach the connection whole and in the
// order they were accepted, a write error is returned by later writes,
// and a peer that does not read stops the writers (bounded queue).
func TestBatcher(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var got []byte
	b := newBatcher(func(p []byte) (int, error) {
		mu.Lock()
		got = append(got, p...)
		mu.Unlock()
		return len(p), nil
	})
	var wg sync.WaitGroup
	var order sync.Mutex // makes acceptance order = record order
	var want []byte
	for i := range 8 {
		wg.Go(func() {
			for j := range 200 {
				msg := []byte(fmt.Sprintf("<%d.%d>", i, j))
				order.Lock()
				b.write(msg)
				want = append(want, msg...)
				order.Unlock()
			}
		})
	}
	wg.Wait()
	b.drain(func(time.Time) error { return nil }, time.Second)
	mu.Lock()
	if string(got) != string(want) {
		t.Fatalf("bytes reordered or lost: %d bytes, want %d", len(got), len(want))
	}
	mu.Unlock()

	// A write that fails: later writes report it.
	fail := newBatcher(func(p []byte) (int, error) { return 0, net.ErrClosed })
	fail.write([]byte("x"))
	fail.drain(func(time.Time) error { return nil }, time.Second)
	if _, err := fail.write([]byte("y")); err == nil {
		t.Fatal("a failed connection accepted another write")
	}

	// A peer that does not read: the writer blocks once batchMax is queued.
	release := make(chan struct{})
	stuck := newBatcher(func(p []byte) (int, error) { <-release; return len(p), nil })
	var queued atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		chunk := make([]byte, 16<<10)
		for range 64 { // 1 MiB
			stuck.write(chunk)
			queued.Add(int64(len(chunk)))
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for last := int64(-1); ; {
		q := queued.Load()
		if q == last && q > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the writer never blocked")
		}
		last = q
		time.Sleep(100 * time.Millisecond)
	}
	if q := queued.Load(); q > 2*batchMax+16<<10 {
		t.Fatalf("%d bytes accepted for a peer that reads nothing", q)
	}
	close(release)
	<-done
}
