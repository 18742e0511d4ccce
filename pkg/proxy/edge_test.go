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

	"github.com/sluice-dev/sluice/pkg/audit"
)

// rawTLS sends raw HTTP/1.1 text over TLS with the given SNI and returns the
// response.
func rawTLS(t *testing.T, e *env, dst netip.AddrPort, sni, request string) (*http.Response, string) {
	t.Helper()
	c, err := e.dial(context.Background(), dst)
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(c, &tls.Config{ServerName: sni, RootCAs: e.sandbox, NextProtos: []string{"http/1.1"}, InsecureSkipVerify: sni == ""})
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(tc, request)
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		t.Fatal(err)
	}
	return resp, readAll(t, resp)
}

func TestRequestEdges(t *testing.T) {
	var lastHeaders atomic.Pointer[http.Header]
	up := newUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Clone()
		lastHeaders.Store(&h)
		fmt.Fprintf(w, "host=%s", r.Host)
	}))
	dst := addrPort(t, up.URL)
	e := newEnv(t, apiPolicy(dst.Port()))
	e.bind("api.test", dst)
	tests := []struct {
		name      string
		sni, req  string
		wantCode  int
		wantBody  string
		checkSent func(h http.Header) string
	}{
		{
			name:     "CONNECT refused",
			sni:      "api.test",
			req:      "CONNECT other.test:443 HTTP/1.1\r\nHost: other.test:443\r\n\r\n",
			wantCode: 403, wantBody: "CONNECT is not allowed",
		},
		{
			name:     "h2c upgrade refused (would tunnel past request checks)",
			sni:      "api.test",
			req:      "GET /x HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
			wantCode: 403, wantBody: "only WebSocket",
		},
		{
			name:     "http absolute URI on TLS refused",
			sni:      "api.test",
			req:      "GET http://api.test/x HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
			wantCode: 403, wantBody: "absolute URI",
		},
		{
			name:     "hop-by-hop trick cannot drop the injected header",
			sni:      "api.test",
			req:      "GET /x HTTP/1.1\r\nHost: api.test\r\nConnection: close, Authorization\r\nAuthorization: Bearer mine\r\nProxy-Authorization: Basic eA==\r\n\r\n",
			wantCode: 200, wantBody: "host=api.test",
			checkSent: func(h http.Header) string {
				if got := h.Values("Authorization"); len(got) != 1 || got[0] != "Bearer s3cr3t-token-value" {
					return fmt.Sprintf("Authorization %q", got)
				}
				if h.Get("Proxy-Authorization") != "" {
					return "Proxy-Authorization forwarded"
				}
				return ""
			},
		},
		{
			name:     "duplicate client Authorization replaced by one",
			sni:      "api.test",
			req:      "GET /x HTTP/1.1\r\nHost: api.test\r\nAuthorization: a\r\nauthorization: b\r\nX-Forwarded-For: 10.9.9.9\r\nConnection: close\r\n\r\n",
			wantCode: 200, wantBody: "host=api.test",
			checkSent: func(h http.Header) string {
				if got := h.Values("Authorization"); len(got) != 1 {
					return fmt.Sprintf("Authorization %q", got)
				}
				if got := h.Get("X-Forwarded-For"); got != "10.9.9.9" {
					return fmt.Sprintf("X-Forwarded-For %q (sluice must be transparent)", got)
				}
				return ""
			},
		},
		{
			name:     "no SNI: the bound name decides",
			sni:      "",
			req:      "GET /x HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
			wantCode: 200, wantBody: "host=api.test",
		},
		{
			name:     "invalid Host",
			sni:      "api.test",
			req:      "GET /x HTTP/1.1\r\nHost: api.test@evil.test\r\nConnection: close\r\n\r\n",
			wantCode: 400,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lastHeaders.Store(nil)
			resp, body := rawTLS(t, e, dst, tt.sni, tt.req)
			if resp.StatusCode != tt.wantCode || !strings.Contains(body, tt.wantBody) {
				t.Fatalf("got %d %q, want %d with %q", resp.StatusCode, body, tt.wantCode, tt.wantBody)
			}
			if tt.checkSent != nil {
				h := lastHeaders.Load()
				if h == nil {
					t.Fatal("upstream saw nothing")
				}
				if msg := tt.checkSent(*h); msg != "" {
					t.Fatal(msg)
				}
			}
		})
	}
}

func TestHTTP2AuthorityFronting(t *testing.T) {
	var seen atomic.Int64
	up := newUpstream(t, "127.0.0.1", echoHeaders(&seen))
	dst := addrPort(t, up.URL)
	e := newEnv(t, fmt.Sprintf(`
version: 1
rules:
  - name: api
    hosts: [api.test]
    ports: [%[1]d]
    headers: [{name: Authorization, type: secret, value: "Bearer {TOKEN}"}]
  - name: other
    hosts: [other.test]
    ports: [%[1]d]
`, dst.Port()))
	e.bind("api.test", dst)
	e.bind("other.test", dst)
	tr := e.transport(true)
	defer tr.CloseIdleConnections()
	// Same connection (SNI api.test), second request with :authority other.test.
	req, _ := http.NewRequest("GET", fmt.Sprintf("https://api.test:%d/a", dst.Port()), nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	req, _ = http.NewRequest("GET", fmt.Sprintf("https://api.test:%d/b", dst.Port()), nil)
	req.Host = "other.test"
	resp, err = tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp)
	if resp.StatusCode != 403 || resp.ProtoMajor != 2 || !strings.Contains(body, "differs from the TLS server name") {
		t.Fatalf("got %d %s %q", resp.StatusCode, resp.Proto, body)
	}
	if seen.Load() != 1 {
		t.Fatalf("upstream saw %d requests, want 1", seen.Load())
	}
}

func TestServerFirstProtocol(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.6:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "220 greetings\r\n")
			io.Copy(c, c)
			c.Close()
		}
	}()
	dst := netip.MustParseAddrPort(ln.Addr().String())
	e := newEnv(t, fmt.Sprintf(`
version: 1
rules:
  - name: db
    cidrs: [127.0.0.6/32]
    ports: [%d]
`, dst.Port()))
	c, err := e.dial(context.Background(), dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second)) // the banner comes after FirstByteTimeout
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || line != "220 greetings\r\n" {
		t.Fatalf("banner %q, %v", line, err)
	}
	io.WriteString(c, "QUIT\r\n")
	if line, _ = br.ReadString('\n'); line != "QUIT\r\n" {
		t.Fatalf("echo %q", line)
	}
}

func TestConnEventFields(t *testing.T) {
	up := newUpstream(t, "127.0.0.1", echoHeaders(nil))
	dst := addrPort(t, up.URL)
	e := newEnv(t, apiPolicy(dst.Port()))
	e.bind("api.test", dst)
	tr := e.transport(false)
	resp, err := (&http.Client{Transport: tr}).Get(fmt.Sprintf("https://api.test:%d/v1/x?key=supersecretquery&b=2", dst.Port()))
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	tr.CloseIdleConnections()
	conns := e.rec.waitKind(t, audit.KindConn, 1)
	if len(conns) != 1 {
		t.Fatalf("conn events %+v", conns)
	}
	ev := conns[0]
	if ev.Decision != audit.DecisionIntercept || ev.SNI != "api.test" || ev.Rule != "api" || ev.Dst != dst.String() ||
		ev.BytesUp == 0 || ev.BytesDown == 0 || ev.PID != 42 || ev.Comm != "testclient" || ev.CgroupID != 7 || ev.Proto != "tls" || ev.V != audit.SchemaVersion {
		t.Fatalf("conn event %+v", ev)
	}
	h := e.rec.kind(audit.KindHTTP)
	if len(h) != 1 || h[0].Path != "/v1/x?key=REDACTED&b=REDACTED" || h[0].Host != "api.test" || h[0].Method != "GET" || h[0].LatencyMS <= 0 {
		t.Fatalf("http events %+v", h)
	}
	if strings.Contains(fmt.Sprint(e.rec.ev), "supersecretquery") || strings.Contains(fmt.Sprint(e.rec.ev), "s3cr3t") {
		t.Fatal("query value or secret in events")
	}
}

// A connection admitted by a CIDR rule must reach its original destination
// even when a pooled upstream connection for the same name exists.
func TestCIDRConnectionNeverUsesSharedPool(t *testing.T) {
	var hitsA, hitsB atomic.Int64
	a := newUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hitsA.Add(1)
		if r.Header.Get("X-Internal") != "" {
			t.Error("CIDR rule credentials reached the named host")
		}
		io.WriteString(w, "A")
	}))
	aDst := addrPort(t, a.URL)
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.7:%d", aDst.Port()))
	if err != nil {
		t.Skipf("cannot bind 127.0.0.7:%d: %v", aDst.Port(), err)
	}
	b := newUpstreamOn(t, ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hitsB.Add(1)
		io.WriteString(w, "B "+r.Header.Get("X-Internal")) // echoed: redacted
	}))
	bDst := addrPort(t, b.URL)
	e := newEnv(t, fmt.Sprintf(`
version: 1
rules:
  - name: api
    hosts: [api.test]
    ports: [%[1]d]
    headers: [{name: Authorization, type: secret, value: "Bearer {TOKEN}"}]
  - name: internal
    cidrs: [127.0.0.7/32]
    ports: [%[1]d]
    headers: [{name: X-Internal, type: secret, value: "{OTHER}"}]
`, aDst.Port()))
	e.bind("api.test", aDst)
	// Pool an upstream connection to A for api.test.
	resp, body := rawTLS(t, e, aDst, "api.test", "GET / HTTP/1.1\r\nHost: api.test\r\n\r\n")
	if resp.StatusCode != 200 || body != "A" {
		t.Fatalf("A: %d %q", resp.StatusCode, body)
	}
	// SNI api.test to the CIDR address: the CIDR rule decides, B answers.
	resp, body = rawTLS(t, e, bDst, "api.test", "GET / HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
	if resp.StatusCode != 200 || body != "B [redacted by sluice]" {
		t.Fatalf("B: %d %q", resp.StatusCode, body)
	}
	if hitsA.Load() != 1 || hitsB.Load() != 1 {
		t.Fatalf("hits A=%d B=%d, want 1 and 1", hitsA.Load(), hitsB.Load())
	}
}

func TestCIDRRuleRequests(t *testing.T) {
	up := newPlainUpstream(t, "127.0.0.8", echoHeaders(nil))
	dst := addrPort(t, up.URL)
	e := newEnv(t, fmt.Sprintf(`
version: 1
rules:
  - name: internal
    cidrs: [127.0.0.8/32]
    ports: [%d]
    paths: ["/ok/*"]
    methods: [GET]
    headers: [{name: Authorization, type: secret, value: "Bearer {TOKEN}"}]
    insecure_http: true
`, dst.Port()))
	c := e.client(false)
	for _, tt := range []struct {
		name, method, url string
		code              int
		want              string
	}{
		{name: "allowed, any Host", method: "GET", url: fmt.Sprintf("http://whatever.test:%d/ok/1", dst.Port()), code: 200, want: "auth=BEARER S3CR3T-TOKEN-VALUE host=whatever.test"},
		{name: "path outside", method: "GET", url: fmt.Sprintf("http://whatever.test:%d/no", dst.Port()), code: 403, want: "sluice policy"},
		{name: "method outside", method: "POST", url: fmt.Sprintf("http://%s/ok/1", dst), code: 403, want: "method: POST"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e.hosts[fmt.Sprintf("whatever.test:%d", dst.Port())] = dst
			req, _ := http.NewRequest(tt.method, tt.url, nil)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			if body := readAll(t, resp); resp.StatusCode != tt.code || !strings.Contains(body, tt.want) {
				t.Fatalf("got %d %q", resp.StatusCode, body)
			}
		})
	}
}

// Without SNI, an address shared by a spliced name and an intercepted one is
// intercepted, so the intercepted rule's paths still apply.
func TestNoSNISharedAddress(t *testing.T) {
	var seen atomic.Int64
	up := newUpstream(t, "127.0.0.1", echoHeaders(&seen))
	dst := addrPort(t, up.URL)
	e := newEnv(t, fmt.Sprintf(`
version: 1
rules:
  - name: open
    hosts: [open.test]
    ports: [%[1]d]
  - name: api
    hosts: [api.test]
    ports: [%[1]d]
    paths: ["/allowed"]
`, dst.Port()))
	e.bind("open.test", dst)
	e.bind("api.test", dst)
	resp, body := rawTLS(t, e, dst, "", "GET /forbidden HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
	if resp.StatusCode != 403 || !strings.Contains(body, "sluice policy") {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	if seen.Load() != 0 {
		t.Fatal("request reached the upstream")
	}
}

func TestIPv6ListenerSameSandbox(t *testing.T) {
	ln6, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	up := newUpstream(t, "127.0.0.1", echoHeaders(nil))
	dst := addrPort(t, up.URL)
	e := newEnv(t, apiPolicy(dst.Port()))
	e.bind("api.test", dst)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.p.Serve(ctx, e.sb, ln6) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	c, err := net.Dial("tcp", ln6.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	e.orig.set(netip.MustParseAddrPort(c.LocalAddr().String()), dst)
	tc := tls.Client(c, &tls.Config{ServerName: "api.test", RootCAs: e.sandbox, NextProtos: []string{"http/1.1"}})
	defer tc.Close()
	io.WriteString(tc, "GET /v1/x HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != 200 || !strings.Contains(body, "BEARER S3CR3T") {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

func TestTLSSessionResumption(t *testing.T) {
	up := newUpstream(t, "127.0.0.1", echoHeaders(nil))
	dst := addrPort(t, up.URL)
	e := newEnv(t, apiPolicy(dst.Port()))
	e.bind("api.test", dst)
	cfg := &tls.Config{ServerName: "api.test", RootCAs: e.sandbox, ClientSessionCache: tls.NewLRUClientSessionCache(4), NextProtos: []string{"http/1.1"}}
	for i, wantResume := range []bool{false, true} {
		c, err := e.dial(context.Background(), dst)
		if err != nil {
			t.Fatal(err)
		}
		tc := tls.Client(c, cfg)
		io.WriteString(tc, "GET /v1/x HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp) // TLS 1.3 tickets arrive after the handshake
		if got := tc.ConnectionState().DidResume; got != wantResume {
			t.Fatalf("connection %d: DidResume %v, want %v", i, got, wantResume)
		}
		tc.Close()
	}
}

// The mirror must prove the mirror's name, not the name the sandbox asked for.
func TestRemapVerifiesMirrorName(t *testing.T) {
	var seen atomic.Int64
	mirror := newUpstream(t, "127.0.0.5", echoHeaders(&seen))
	leaf, err := upstreamCA.Leaf("registry.npmjs.org")
	if err != nil {
		t.Fatal(err)
	}
	mirror.TLS.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return leaf, nil }
	mdst := addrPort(t, mirror.URL)
	e := newEnv(t, fmt.Sprintf(`
version: 1
rules:
  - name: npm
    hosts: [registry.npmjs.org]
    ports: [443]
    remap: "npm.mirror.test:%d"
    headers: [{name: Authorization, type: secret, value: "Bearer {TOKEN}"}]
`, mdst.Port()))
	orig := netip.AddrPortFrom(mdst.Addr(), 443)
	e.hosts["registry.npmjs.org:443"] = orig
	e.names[orig.Addr()] = []string{"registry.npmjs.org"}
	resp, err := e.client(false).Get("https://registry.npmjs.org/left-pad")
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp)
	if resp.StatusCode != 502 || !strings.Contains(body, "npm.mirror.test") {
		t.Fatalf("got %d %q, want 502 naming the mirror", resp.StatusCode, body)
	}
	if seen.Load() != 0 {
		t.Fatal("the mirror received the request")
	}
}

// fragmentingConn re-splits the client's first flight (the ClientHello) into
// small TLS records written in separate segments.
type fragmentingConn struct {
	net.Conn
	done bool
}

func (f *fragmentingConn) Write(b []byte) (int, error) {
	if f.done || len(b) < 5 || b[0] != 0x16 {
		return f.Conn.Write(b)
	}
	f.done = true
	n := 5 + (int(b[3])<<8 | int(b[4]))
	frag := fragment(b[:n], 50)
	for len(frag) > 0 {
		k := min(len(frag), 37)
		if _, err := f.Conn.Write(frag[:k]); err != nil {
			return 0, err
		}
		frag = frag[k:]
		time.Sleep(time.Millisecond)
	}
	if _, err := f.Conn.Write(b[n:]); err != nil {
		return 0, err
	}
	return len(b), nil
}

func TestFragmentedClientHello(t *testing.T) {
	up := newUpstream(t, "127.0.0.1", echoHeaders(nil))
	dst := addrPort(t, up.URL)
	e := newEnv(t, apiPolicy(dst.Port()))
	e.bind("api.test", dst)
	c, err := e.dial(context.Background(), dst)
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(&fragmentingConn{Conn: c}, &tls.Config{ServerName: "api.test", RootCAs: e.sandbox, NextProtos: []string{"http/1.1"}})
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(tc, "GET /v1/x HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != 200 || !strings.Contains(body, "BEARER S3CR3T") {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	if ev := e.rec.waitKind(t, audit.KindConn, 1); len(ev) != 1 || ev[0].SNI != "api.test" {
		t.Fatalf("conn events %+v", ev)
	}
}
