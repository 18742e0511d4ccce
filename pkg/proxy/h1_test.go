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
	"sync/atomic"
	"testing"
	"time"
)

// rawSession is one HTTP/1.x client connection to the proxy, for requests
// written by hand.
type rawSession struct {
	t  *testing.T
	tc *tls.Conn
	br *bufio.Reader
}

func newRawSession(t *testing.T, e *env, dst netip.AddrPort, sni string) *rawSession {
	t.Helper()
	c, err := e.dial(context.Background(), dst)
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(c, &tls.Config{ServerName: sni, RootCAs: e.sandbox, NextProtos: []string{"http/1.1"}})
	t.Cleanup(func() { tc.Close() })
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawSession{t: t, tc: tc, br: bufio.NewReader(tc)}
}

// do writes request and reads one response (method is the request's, for
// HEAD) with its whole body.
func (s *rawSession) do(method, request string) (*http.Response, string) {
	s.t.Helper()
	if _, err := io.WriteString(s.tc, request); err != nil {
		s.t.Fatal(err)
	}
	resp, err := http.ReadResponse(s.br, &http.Request{Method: method})
	if err != nil {
		s.t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatalf("reading body: %v", err)
	}
	return resp, string(b)
}

func TestH1ProtocolEdges(t *testing.T) {
	up := newUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/trailer":
			w.Header().Set("Trailer", "X-Checksum")
			io.WriteString(w, "body")
			w.(http.Flusher).Flush()
			w.Header().Set("X-Checksum", "abc")
		case "/hints":
			w.Header().Set("Link", "</a.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			io.WriteString(w, "after hints")
		case "/hop":
			w.Header().Set("Connection", "X-Private")
			w.Header().Set("X-Private", "upstream-only")
			w.Header().Set("Keep-Alive", "timeout=5")
			io.WriteString(w, "hop")
		case "/rtrailer":
			b, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "body=%s trailer=%s", b, r.Trailer.Get("X-Sum"))
		case "/te":
			fmt.Fprintf(w, "te=%q", r.Header.Values("Te"))
		case "/ua":
			fmt.Fprintf(w, "ua=%q", r.Header.Values("User-Agent"))
		default:
			w.Header().Set("Content-Length", "5")
			io.WriteString(w, "hello")
		}
	}))
	dst := addrPort(t, up.URL)
	e := newEnv(t, apiPolicy(dst.Port()))
	e.bind("api.test", dst)

	t.Run("417 for an unknown expectation", func(t *testing.T) {
		s := newRawSession(t, e, dst, "api.test")
		resp, _ := s.do("GET", "GET /x HTTP/1.1\r\nHost: api.test\r\nExpect: teapot\r\n\r\n")
		if resp.StatusCode != http.StatusExpectationFailed {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
	t.Run("431 for a head over 1 MiB", func(t *testing.T) {
		s := newRawSession(t, e, dst, "api.test")
		big := strings.Repeat("a", 8<<10)
		var b strings.Builder
		b.WriteString("GET /x HTTP/1.1\r\nHost: api.test\r\n")
		for i := range 140 {
			fmt.Fprintf(&b, "X-Big-%d: %s\r\n", i, big)
		}
		b.WriteString("\r\n")
		go io.WriteString(s.tc, b.String()) // the proxy stops reading
		resp, err := http.ReadResponse(s.br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
	t.Run("400 for HTTP/1.1 without Host", func(t *testing.T) {
		s := newRawSession(t, e, dst, "api.test")
		resp, body := s.do("GET", "GET /x HTTP/1.1\r\n\r\n")
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "Host") {
			t.Fatalf("got %d %q", resp.StatusCode, body)
		}
	})
	t.Run("HTTP/1.0 client answered and closed", func(t *testing.T) {
		s := newRawSession(t, e, dst, "api.test")
		resp, body := s.do("GET", "GET /trailer HTTP/1.0\r\nHost: api.test\r\n\r\n")
		if resp.StatusCode != 200 || resp.ProtoMinor != 0 || body != "body" || !resp.Close {
			t.Fatalf("got %d %s %q close=%v", resp.StatusCode, resp.Proto, body, resp.Close)
		}
	})
	t.Run("keep-alive: HEAD, trailers, early hints, hop-by-hop, Te", func(t *testing.T) {
		s := newRawSession(t, e, dst, "api.test")
		resp, body := s.do("HEAD", "HEAD /x HTTP/1.1\r\nHost: api.test\r\n\r\n")
		if resp.StatusCode != 200 || resp.ContentLength != 5 || body != "" {
			t.Fatalf("HEAD: %d length %d %q", resp.StatusCode, resp.ContentLength, body)
		}
		resp, body = s.do("GET", "GET /trailer HTTP/1.1\r\nHost: api.test\r\n\r\n")
		if body != "body" || resp.Trailer.Get("X-Checksum") != "abc" {
			t.Fatalf("trailer: %q %v", body, resp.Trailer)
		}
		if _, err := io.WriteString(s.tc, "GET /hints HTTP/1.1\r\nHost: api.test\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		hints, err := http.ReadResponse(s.br, nil)
		if err != nil || hints.StatusCode != http.StatusEarlyHints || hints.Header.Get("Link") == "" {
			t.Fatalf("early hints: %v %+v", err, hints)
		}
		resp, err = http.ReadResponse(s.br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := io.ReadAll(resp.Body); resp.StatusCode != 200 || string(b) != "after hints" {
			t.Fatalf("after hints: %d %q", resp.StatusCode, b)
		}
		resp, body = s.do("GET", "GET /hop HTTP/1.1\r\nHost: api.test\r\n\r\n")
		if body != "hop" || resp.Header.Get("X-Private") != "" || resp.Header.Get("Keep-Alive") != "" {
			t.Fatalf("hop-by-hop response headers relayed: %v", resp.Header)
		}
		_, body = s.do("POST", "POST /rtrailer HTTP/1.1\r\nHost: api.test\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 42\r\n\r\n")
		if body != "body=abc trailer=42" {
			t.Fatalf("request trailer: %s", body)
		}
		_, body = s.do("GET", "GET /te HTTP/1.1\r\nHost: api.test\r\nTe: trailers, deflate\r\nConnection: Te\r\n\r\n")
		if body != `te=["trailers"]` {
			t.Fatalf("Te upstream: %s", body)
		}
		// Transparent: no User-Agent of sluice's own, none added when absent.
		if _, body = s.do("GET", "GET /ua HTTP/1.1\r\nHost: api.test\r\n\r\n"); body != "ua=[]" {
			t.Fatalf("User-Agent upstream: %s", body)
		}
		if _, body = s.do("GET", "GET /ua HTTP/1.1\r\nHost: api.test\r\nUser-Agent: agent/1\r\n\r\n"); body != `ua=["agent/1"]` {
			t.Fatalf("User-Agent upstream: %s", body)
		}
	})
}

// TestH1StaleUpstream: an upstream that drops idle connections quickly
// (as Node's 5 s keep-alive does) must not cost the sandbox a 502, for
// requests with a body either.
func TestH1StaleUpstream(t *testing.T) {
	var conns atomic.Int64
	up := newUpstreamWith(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %d", r.Method, r.URL.Path, len(b))
	}), func(srv *http.Server) {
		srv.IdleTimeout = 50 * time.Millisecond
		srv.ConnState = countNew(&conns)
	})
	dst := addrPort(t, up.URL)
	e := newEnv(t, apiPolicy(dst.Port()))
	e.bind("api.test", dst)
	s := newRawSession(t, e, dst, "api.test")
	for i, req := range []string{
		"GET /a HTTP/1.1\r\nHost: api.test\r\n\r\n",
		"GET /b HTTP/1.1\r\nHost: api.test\r\n\r\n",
		"POST /c HTTP/1.1\r\nHost: api.test\r\nContent-Length: 3\r\n\r\nxyz",
		"PUT /d HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
	} {
		if i > 0 {
			time.Sleep(300 * time.Millisecond) // the upstream has closed by now
		}
		method, rest, _ := strings.Cut(req, " ")
		path, _, _ := strings.Cut(rest, " ")
		resp, body := s.do(method, req)
		if resp.StatusCode != 200 || !strings.HasPrefix(body, method+" "+path) {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	if n := conns.Load(); n < 4 {
		t.Fatalf("upstream saw %d connections; the test did not exercise stale ones", n)
	}
}

// TestH1UpstreamPooled: upstream connections outlive the client
// connections that opened them, so a client opening a connection per
// request does not cost a TLS handshake upstream per request.
func TestH1UpstreamPooled(t *testing.T) {
	var conns atomic.Int64
	up := newUpstreamWith(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}), func(srv *http.Server) { srv.ConnState = countNew(&conns) })
	dst := addrPort(t, up.URL)
	e := newEnv(t, apiPolicy(dst.Port()))
	e.bind("api.test", dst)
	for i := range 10 {
		s := newRawSession(t, e, dst, "api.test")
		resp, body := s.do("GET", "GET /x HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
		if resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
		s.tc.Close()
		// The proxy returns the upstream connection to its pool once the
		// client connection ends; wait for that before the next one.
		for deadline := time.Now().Add(5 * time.Second); e.p.idle.len() == 0; {
			if time.Now().After(deadline) {
				t.Fatalf("request %d: the upstream connection never reached the idle pool", i)
			}
			time.Sleep(time.Millisecond)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("upstream saw %d connections for 10 sequential client connections, want 1", n)
	}
}

// countNew is a ConnState hook counting new connections.
func countNew(n *atomic.Int64) func(net.Conn, http.ConnState) {
	return func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			n.Add(1)
		}
	}
}

func TestWriteFieldKeepsOneLine(t *testing.T) {
	var b strings.Builder
	bw := bufio.NewWriter(&b)
	writeField(bw, "Authorization", "Bearer x\r\nX-Evil: 1\n")
	bw.Flush()
	if got := b.String(); got != "Authorization: Bearer x  X-Evil: 1\r\n" {
		t.Fatalf("got %q", got)
	}
}

// TestH1EarlyUpstreamAnswer: an upstream that refuses a large upload
// without reading it: the sandbox gets the upstream's answer, not a 502.
func TestH1EarlyUpstreamAnswer(t *testing.T) {
	up := newUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/upload" {
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			io.WriteString(w, "too large")
			return
		}
		io.WriteString(w, "ok")
	}))
	dst := addrPort(t, up.URL)
	e := newEnv(t, fmt.Sprintf(`
version: 1
rules:
  - name: api
    hosts: [api.test]
    ports: [%d]
    paths: ["/upload"]
    headers: [{name: Authorization, type: secret, value: "Bearer {TOKEN}"}]
`, dst.Port()))
	e.bind("api.test", dst)
	c := e.client(false)
	for _, tt := range []struct {
		path, want string
		code       int
	}{
		{"/upload", "too large", http.StatusRequestEntityTooLarge}, // the upstream's answer
		{"/elsewhere", "sluice policy", http.StatusForbidden},      // sluice's, body unread
	} {
		resp, err := c.Post(fmt.Sprintf("https://api.test:%d%s", dst.Port(), tt.path), "application/octet-stream",
			io.LimitReader(zeroReader{}, 64<<20))
		if err != nil {
			t.Fatalf("%s: %v", tt.path, err)
		}
		body := readAll(t, resp)
		if resp.StatusCode != tt.code || !strings.Contains(body, tt.want) {
			t.Fatalf("%s: got %d %q, want %d with %q", tt.path, resp.StatusCode, body, tt.code, tt.want)
		}
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// TestH1IdleClientReleasesUpstream: a keep-alive client that goes quiet
// gives its upstream connection back to the pool, and its next request
// still works.
func TestH1IdleClientReleasesUpstream(t *testing.T) {
	up := newUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	dst := addrPort(t, up.URL)
	e := newEnv(t, apiPolicy(dst.Port()))
	e.bind("api.test", dst)
	s := newRawSession(t, e, dst, "api.test")
	for i := range 2 {
		resp, body := s.do("GET", "GET /x HTTP/1.1\r\nHost: api.test\r\n\r\n")
		if resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
		if i == 1 {
			break
		}
		if n := e.p.idle.len(); n != 0 {
			t.Fatalf("%d idle upstream connections right after a request; want the connection pinned", n)
		}
		deadline := time.Now().Add(5 * time.Second)
		for e.p.idle.len() == 0 {
			if time.Now().After(deadline) {
				t.Fatal("the idle client's upstream connection never reached the pool")
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// TestH1ServeStopsDuringSilentStream: stopping Serve ends an intercepted
// stream whose upstream has gone quiet (an idle event stream); nothing
// waits for the upstream's next byte.
func TestH1ServeStopsDuringSilentStream(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	up := newUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	dst := addrPort(t, up.URL)
	e := newEnv(t, apiPolicy(dst.Port()))
	e.bind("api.test", dst)
	s := newRawSession(t, e, dst, "api.test")
	if _, err := io.WriteString(s.tc, "GET /events HTTP/1.1\r\nHost: api.test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(s.br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("stream: %v %v", err, resp)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "data: first\n" {
		t.Fatalf("first event: %q %v", line, err)
	}
	e.stop()
	select {
	case <-e.stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return while an upstream stream was silent")
	}
}

// TestH1ClientGoneWhileUpstreamQuiet: a client that goes away during a
// quiet event stream or a long poll ends the upstream request too.
func TestH1ClientGoneWhileUpstreamQuiet(t *testing.T) {
	ended := make(chan string, 2)
	up := newUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/events" {
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, "data: first\n\n")
			w.(http.Flusher).Flush()
		}
		select {
		case <-r.Context().Done():
			ended <- r.URL.Path
		case <-time.After(20 * time.Second):
		}
	}))
	dst := addrPort(t, up.URL)
	e := newEnv(t, apiPolicy(dst.Port()))
	e.bind("api.test", dst)
	for _, path := range []string{"/events", "/poll"} {
		s := newRawSession(t, e, dst, "api.test")
		if _, err := io.WriteString(s.tc, "GET "+path+" HTTP/1.1\r\nHost: api.test\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		if path == "/events" {
			resp, err := http.ReadResponse(s.br, nil)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("stream: %v %v", err, resp)
			}
			if line, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil || line != "data: first\n" {
				t.Fatalf("first event: %q %v", line, err)
			}
		} else {
			time.Sleep(watchAfter + 200*time.Millisecond) // past the head wait's watch delay
		}
		s.tc.Close()
		select {
		case got := <-ended:
			if got != path {
				t.Fatalf("upstream request %s ended, want %s", got, path)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the upstream request outlived the client by 10 s", path)
		}
	}
	for _, ev := range e.rec.waitKind(t, "http", 2) {
		if ev.Status != 499 {
			t.Errorf("event for %s: status %d, want 499", ev.Path, ev.Status)
		}
	}
}
