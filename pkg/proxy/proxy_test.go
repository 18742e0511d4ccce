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

// echoHeaders answers with the request's Authorization, Host and path.
func echoHeaders(seen *atomic.Int64) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if seen != nil {
			seen.Add(1)
		}
		w.Header().Set("X-Proto", r.Proto)
		// Upper-cased so that echo redaction leaves it alone.
		fmt.Fprintf(w, "auth=%s host=%s path=%s", strings.ToUpper(r.Header.Get("Authorization")), r.Host, r.URL.Path)
	}
}

func TestInterceptInjects(t *testing.T) {
	var seen atomic.Int64
	up := newUpstream(t, "127.0.0.1", echoHeaders(&seen))
	dst := addrPort(t, up.URL)
	e := newEnv(t, fmt.Sprintf(`
version: 1
rules:
  - name: api
    hosts: [api.test]
    ports: [%d]
    paths: ["/v1/*"]
    methods: [GET, POST]
    headers:
      - {name: Authorization, type: secret, value: "Bearer {TOKEN}"}
`, dst.Port()))
	e.bind("api.test", dst)
	base := fmt.Sprintf("https://api.test:%d", dst.Port())

	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			c := e.client(h2)
			tests := []struct {
				name       string
				method     string
				path       string
				clientAuth string
				wantCode   int
				wantBody   string
			}{
				{name: "allowed and injected", method: "GET", path: "/v1/models", wantCode: 200, wantBody: "auth=BEARER S3CR3T-TOKEN-VALUE host=api.test:"},
				{name: "client header replaced", method: "GET", path: "/v1/x", clientAuth: "Bearer fake", wantCode: 200, wantBody: "auth=BEARER S3CR3T-TOKEN-VALUE"},
				{name: "path outside rule", method: "GET", path: "/admin", wantCode: 403, wantBody: "sluice policy"},
				{name: "method outside rule", method: "DELETE", path: "/v1/models", wantCode: 403, wantBody: "method: DELETE"},
				{name: "dot segments", method: "GET", path: "/v1/../admin", wantCode: 400, wantBody: "\"..\" path segment"},
				{name: "allowed again on the same connection", method: "POST", path: "/v1/chat", wantCode: 200, wantBody: "auth=BEARER S3CR3T-TOKEN-VALUE"},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					req, _ := http.NewRequest(tt.method, base+tt.path, nil)
					if tt.path == "/v1/../admin" {
						req.URL.Opaque = "//api.test:" + fmt.Sprint(dst.Port()) + tt.path
					}
					if tt.clientAuth != "" {
						req.Header.Set("Authorization", tt.clientAuth)
					}
					resp, err := c.Do(req)
					if err != nil {
						t.Fatal(err)
					}
					body := readAll(t, resp)
					if resp.StatusCode != tt.wantCode || !strings.Contains(body, tt.wantBody) {
						t.Fatalf("got %d %q, want %d containing %q", resp.StatusCode, body, tt.wantCode, tt.wantBody)
					}
					if tt.wantCode == 403 && (!strings.Contains(body, "api.test") || !strings.Contains(body, tt.method)) {
						t.Fatalf("403 body does not name host and method: %q", body)
					}
					if h2 && resp.ProtoMajor != 2 {
						t.Fatalf("client got %s, want HTTP/2", resp.Proto)
					}
				})
			}
		})
	}
	// keep-alive: one connection per client protocol
	conns := e.rec.waitKind(t, audit.KindHTTP, 12)
	if len(conns) != 12 {
		t.Fatalf("%d http events, want 12", len(conns))
	}
	for _, ev := range conns {
		if ev.Decision == audit.DecisionAllow && (len(ev.Injected) != 1 || ev.Injected[0] != "Authorization" || ev.Rule != "api" || ev.Status != 200) {
			t.Errorf("http event %+v", ev)
		}
		if ev.PID != 42 || ev.Comm != "testclient" || ev.Sandbox != "sb-test" {
			t.Errorf("http event without attribution: %+v", ev)
		}
	}
	if n := seen.Load(); n != 6 {
		t.Fatalf("upstream saw %d requests, want 6", n)
	}
	e.p.Close()
}

func TestUpstreamSeesHTTP2(t *testing.T) {
	up := newUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// gRPC-style: status in a trailer.
		w.Header().Set("Trailer", "Grpc-Status")
		w.Header().Set("X-Proto", r.Proto)
		w.Header().Set("Alt-Svc", `h3=":443"; ma=86400`)
		io.WriteString(w, "body")
		w.Header().Set("Grpc-Status", "0")
	}))
	dst := addrPort(t, up.URL)
	e := newEnv(t, fmt.Sprintf(`
version: 1
rules:
  - name: api
    hosts: [api.test]
    ports: [%d]
    headers: [{name: X-Key, type: plaintext, value: "abc"}]
`, dst.Port()))
	e.bind("api.test", dst)
	// The client's protocol is preserved where the upstream offers it.
	for _, tt := range []struct {
		h2   bool
		want string
	}{{false, "HTTP/1.1"}, {true, "HTTP/2.0"}} {
		resp, err := e.client(tt.h2).Get(fmt.Sprintf("https://api.test:%d/", dst.Port()))
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		if got := resp.Header.Get("X-Proto"); got != tt.want {
			t.Fatalf("h2 client %v: upstream saw %q, want %s", tt.h2, got, tt.want)
		}
		if got := resp.Header.Get("Alt-Svc"); got != "" {
			t.Fatalf("Alt-Svc %q reached the client", got)
		}
		if got := resp.Trailer.Get("Grpc-Status"); got != "0" {
			t.Fatalf("h2 client %v: trailer Grpc-Status %q, want 0", tt.h2, got)
		}
	}
}

func TestSplice(t *testing.T) {
	// A TLS upstream the client verifies itself: sluice must not terminate.
	up := newUpstream(t, "127.0.0.1", echoHeaders(nil))
	dst := addrPort(t, up.URL)
	// A raw TCP echo server for a CIDR rule (no SNI, server speaks second).
	echoLn, err := net.Listen("tcp", "127.0.0.3:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echoLn.Close()
	go func() {
		for {
			c, err := echoLn.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.(*net.TCPConn).CloseWrite() }()
		}
	}()
	echoDst := netip.MustParseAddrPort(echoLn.Addr().String())
	e := newEnv(t, fmt.Sprintf(`
version: 1
rules:
  - name: plain
    hosts: [splice.test]
    ports: [%d]
  - name: db
    cidrs: [127.0.0.3/32]
    ports: [%d]
`, dst.Port(), echoDst.Port()))
	e.bind("splice.test", dst)

	t.Run("tls passthrough", func(t *testing.T) {
		tr := e.transport(false)
		tr.TLSClientConfig = &tls.Config{RootCAs: upstreamPool()} // the real upstream's CA, not the sandbox CA
		c := &http.Client{Transport: tr}
		defer tr.CloseIdleConnections()
		resp, err := c.Get(fmt.Sprintf("https://splice.test:%d/x", dst.Port()))
		if err != nil {
			t.Fatal(err)
		}
		if body := readAll(t, resp); !strings.Contains(body, "auth= host=splice.test") {
			t.Fatalf("body %q", body)
		}
	})
	t.Run("raw tcp with half-close", func(t *testing.T) {
		c, err := e.dial(context.Background(), echoDst)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		msg := strings.Repeat("ping!", 100000)
		go func() {
			io.WriteString(c, msg)
			c.(*net.TCPConn).CloseWrite()
		}()
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != msg {
			t.Fatalf("echo returned %d bytes, want %d", len(got), len(msg))
		}
	})
	evs := e.rec.waitKind(t, audit.KindConn, 2)
	var sawRaw bool
	for _, ev := range evs {
		if ev.Decision != audit.DecisionSplice {
			t.Errorf("conn event %+v, want splice", ev)
		}
		if ev.Rule == "db" {
			sawRaw = true
			if ev.BytesUp != 500000 || ev.BytesDown != 500000 {
				t.Errorf("bytes up/down %d/%d, want 500000", ev.BytesUp, ev.BytesDown)
			}
		}
	}
	if !sawRaw {
		t.Errorf("no conn event for the raw splice: %+v", evs)
	}
}

func TestConnDecisions(t *testing.T) {
	up := newUpstream(t, "127.0.0.1", echoHeaders(nil))
	dst := addrPort(t, up.URL)
	otherDst := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.4"), dst.Port()) // bound to another name
	e := newEnv(t, fmt.Sprintf(`
version: 1
rules:
  - name: api
    hosts: [api.test, alt.test]
    ports: [%[1]d]
    headers: [{name: Authorization, type: secret, value: "Bearer {TOKEN}"}]
  - name: spliced
    hosts: [open.test]
    ports: [%[1]d]
  - name: never
    hosts: [evil.test]
    action: deny
`, dst.Port()))
	e.bind("api.test", dst)
	e.bind("open.test", dst)
	e.bind("evil.test", dst)
	e.names[otherDst.Addr()] = []string{"unrelated.test"}

	tests := []struct {
		name     string
		sni      string
		dst      netip.AddrPort
		wantErr  string // client-side handshake/read error
		wantCode int
		wantBody string
	}{
		{name: "allowed", sni: "api.test", dst: dst, wantCode: 200, wantBody: "BEARER S3CR3T"},
		{name: "same rule name not bound (shared address)", sni: "alt.test", dst: dst, wantCode: 200, wantBody: "host=alt.test"},
		{name: "name not bound to address", sni: "api.test", dst: otherDst, wantCode: 403, wantBody: "not bound"},
		{name: "unknown host", sni: "nope.test", dst: dst, wantCode: 403, wantBody: "no rule allows host nope.test"},
		{name: "deny rule", sni: "evil.test", dst: dst, wantCode: 403, wantBody: "denies host evil.test"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := e.dial(context.Background(), tt.dst)
			if err != nil {
				t.Fatal(err)
			}
			tc := tls.Client(c, &tls.Config{ServerName: tt.sni, RootCAs: e.sandbox})
			defer tc.Close()
			fmt.Fprintf(tc, "GET /x HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", tt.sni)
			resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
			if err != nil {
				if tt.wantErr != "" && strings.Contains(err.Error(), tt.wantErr) {
					return
				}
				t.Fatalf("err %v", err)
			}
			body := readAll(t, resp)
			if resp.StatusCode != tt.wantCode || !strings.Contains(body, tt.wantBody) {
				t.Fatalf("got %d %q, want %d with %q", resp.StatusCode, body, tt.wantCode, tt.wantBody)
			}
		})
	}
}

func TestDomainFronting(t *testing.T) {
	var seen atomic.Int64
	up := newUpstream(t, "127.0.0.1", echoHeaders(&seen))
	dst := addrPort(t, up.URL)
	e := newEnv(t, fmt.Sprintf(`
version: 1
rules:
  - name: api
    hosts: [api.test, alt.test]
    ports: [%[1]d]
    headers: [{name: Authorization, type: secret, value: "Bearer {TOKEN}"}]
  - name: other
    hosts: [other.test]
    ports: [%[1]d]
    headers: [{name: Authorization, type: secret, value: "Bearer {OTHER}"}]
`, dst.Port()))
	e.bind("api.test", dst)
	e.bind("other.test", dst)
	tests := []struct {
		name, sni, host string
		wantCode        int
		wantBody        string
	}{
		{name: "Host of another rule", sni: "api.test", host: "other.test", wantCode: 403, wantBody: "differs from the TLS server name"},
		{name: "Host of an unknown name", sni: "api.test", host: "x.test", wantCode: 403, wantBody: "sluice policy"},
		{name: "Host of the same rule", sni: "api.test", host: "alt.test", wantCode: 200, wantBody: "host=alt.test"},
		{name: "absolute-form to another host", sni: "api.test", host: "", wantCode: 403, wantBody: "differs"},
	}
	before := seen.Load()
	allowed := int64(0)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := e.dial(context.Background(), dst)
			if err != nil {
				t.Fatal(err)
			}
			tc := tls.Client(c, &tls.Config{ServerName: tt.sni, RootCAs: e.sandbox, NextProtos: []string{"http/1.1"}})
			defer tc.Close()
			if tt.host == "" {
				fmt.Fprintf(tc, "GET https://other.test/x HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
			} else {
				fmt.Fprintf(tc, "GET /x HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", tt.host)
			}
			resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, resp)
			if resp.StatusCode != tt.wantCode || !strings.Contains(body, tt.wantBody) {
				t.Fatalf("got %d %q, want %d with %q", resp.StatusCode, body, tt.wantCode, tt.wantBody)
			}
			if resp.StatusCode == 200 {
				allowed++
			}
		})
	}
	if got := seen.Load() - before; got != allowed {
		t.Fatalf("upstream saw %d requests, want %d", got, allowed)
	}
}

func TestBadUpstreamCert(t *testing.T) {
	var seen atomic.Int64
	// Signed by a CA the proxy does not trust.
	unknown := newUpstream(t, "127.0.0.1", echoHeaders(&seen))
	other, _ := newTestCA()
	unknown.TLS.GetCertificate = other.TLSConfig().GetCertificate
	// Trusted CA, but the certificate names another host.
	wrongName := newUpstream(t, "127.0.0.1", echoHeaders(&seen))
	leaf, _ := upstreamCA.Leaf("someone-else.test")
	wrongName.TLS.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return leaf, nil }

	u1, u2 := addrPort(t, unknown.URL), addrPort(t, wrongName.URL)
	e := newEnv(t, fmt.Sprintf(`
version: 1
rules:
  - name: api
    hosts: [unknown.test, wrong.test]
    ports: [%d, %d]
    headers: [{name: Authorization, type: secret, value: "Bearer {TOKEN}"}]
`, u1.Port(), u2.Port()))
	e.bind("unknown.test", u1)
	e.bind("wrong.test", u2)
	c := e.client(false)
	for _, tt := range []struct {
		name, url, wantBody string
	}{
		{name: "unknown authority", url: fmt.Sprintf("https://unknown.test:%d/", u1.Port()), wantBody: "failed TLS verification"},
		{name: "name mismatch", url: fmt.Sprintf("https://wrong.test:%d/", u2.Port()), wantBody: "failed TLS verification"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := c.Get(tt.url)
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, resp)
			if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, tt.wantBody) {
				t.Fatalf("got %d %q", resp.StatusCode, body)
			}
			if strings.Contains(body, "s3cr3t") {
				t.Fatal("secret in error body")
			}
		})
	}
	if n := seen.Load(); n != 0 {
		t.Fatalf("upstream received %d requests", n)
	}
}

func TestCredentialFailures(t *testing.T) {
	var seen atomic.Int64
	up := newUpstream(t, "127.0.0.1", echoHeaders(&seen))
	dst := addrPort(t, up.URL)
	pol := fmt.Sprintf(`
version: 1
rules:
  - name: missing
    hosts: [missing.test]
    ports: [%[1]d]
    headers: [{name: Authorization, type: secret, value: "Bearer {NOPE}"}]
  - name: cb
    hosts: [cb.test]
    ports: [%[1]d]
    callback: {url: "http://127.0.0.1:1/credentials", ttl: 5m, timeout: 2s}
`, dst.Port())
	e := newEnv(t, pol, func(e *env, _ *Config) {
		e.sb.Callbacks = fakeCallbacks{err: fmt.Errorf("callback said 500")}
	})
	e.bind("missing.test", dst)
	e.bind("cb.test", dst)
	c := e.client(false)
	for _, tt := range []struct{ name, host, want string }{
		{name: "secret missing", host: "missing.test", want: "secret NOPE for header Authorization"},
		{name: "callback failure", host: "cb.test", want: "credential callback failed"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := c.Get(fmt.Sprintf("https://%s:%d/", tt.host, dst.Port()))
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, resp)
			if resp.StatusCode != 502 || !strings.Contains(body, tt.want) {
				t.Fatalf("got %d %q, want 502 with %q", resp.StatusCode, body, tt.want)
			}
		})
	}
	if seen.Load() != 0 {
		t.Fatal("request forwarded without its credentials")
	}

	ok := newEnv(t, pol, func(e *env, _ *Config) {
		e.sb.Callbacks = fakeCallbacks{hdrs: map[string]string{"Authorization": "Bearer minted-by-callback"}}
	})
	ok.bind("cb.test", dst)
	resp, err := ok.client(false).Get(fmt.Sprintf("https://cb.test:%d/", dst.Port()))
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); !strings.Contains(body, "auth=BEARER MINTED-BY-CALLBACK") {
		t.Fatalf("callback headers not injected: %q", body)
	}
}

func TestPlainHTTP(t *testing.T) {
	up := newPlainUpstream(t, "127.0.0.1", echoHeaders(nil))
	dst := addrPort(t, up.URL)
	e := newEnv(t, fmt.Sprintf(`
version: 1
rules:
  - name: api
    hosts: [plain.test]
    ports: [%d]
    paths: ["/ok/*"]
    headers: [{name: Authorization, type: secret, value: "Bearer {TOKEN}"}]
    insecure_http: true
`, dst.Port()))
	e.bind("plain.test", dst)
	e.bind("denied.test", dst)
	c := e.client(false)
	for _, tt := range []struct {
		name, url string
		code      int
		want      string
	}{
		{name: "allowed", url: fmt.Sprintf("http://plain.test:%d/ok/1", dst.Port()), code: 200, want: "auth=BEARER S3CR3T-TOKEN-VALUE"},
		{name: "path refused", url: fmt.Sprintf("http://plain.test:%d/no", dst.Port()), code: 403, want: "sluice policy"},
		{name: "host refused", url: fmt.Sprintf("http://denied.test:%d/ok/1", dst.Port()), code: 403, want: "no rule allows host denied.test"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := c.Get(tt.url)
			if err != nil {
				t.Fatal(err)
			}
			if body := readAll(t, resp); resp.StatusCode != tt.code || !strings.Contains(body, tt.want) {
				t.Fatalf("got %d %q", resp.StatusCode, body)
			}
		})
	}
}

func TestAuditMode(t *testing.T) {
	var seen atomic.Int64
	up := newUpstream(t, "127.0.0.1", echoHeaders(&seen))
	dst := addrPort(t, up.URL)
	e := newEnv(t, fmt.Sprintf(`
version: 1
mode: audit
rules:
  - name: api
    hosts: [api.test]
    ports: [%d]
    paths: ["/v1/*"]
    headers: [{name: Authorization, type: secret, value: "Bearer {TOKEN}"}]
`, dst.Port()))
	e.bind("api.test", dst)
	e.bind("unlisted.test", dst)
	c := e.client(false)
	for _, tt := range []struct{ url, want string }{
		{url: fmt.Sprintf("https://api.test:%d/v1/x", dst.Port()), want: "auth=BEARER S3CR3T"},
		{url: fmt.Sprintf("https://api.test:%d/admin", dst.Port()), want: "auth= "},
		{url: fmt.Sprintf("https://unlisted.test:%d/", dst.Port()), want: "auth= host=unlisted.test"},
	} {
		resp, err := c.Get(tt.url)
		if err != nil {
			t.Fatal(err)
		}
		if body := readAll(t, resp); resp.StatusCode != 200 || !strings.Contains(body, tt.want) {
			t.Fatalf("%s: got %d %q", tt.url, resp.StatusCode, body)
		}
	}
	evs := e.rec.waitKind(t, audit.KindHTTP, 3)
	var would int
	for _, ev := range evs {
		if ev.Decision == audit.DecisionWouldDeny {
			would++
		}
	}
	if would != 2 {
		t.Fatalf("%d would_deny events, want 2: %+v", would, evs)
	}
}

func TestRemap(t *testing.T) {
	mirror := newUpstream(t, "127.0.0.5", echoHeaders(nil))
	mdst := addrPort(t, mirror.URL)
	tests := []struct {
		name    string
		resolve bool
	}{
		{name: "original destination is the mirror"},
		{name: "proxy resolves the mirror", resolve: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, fmt.Sprintf(`
version: 1
rules:
  - name: npm
    hosts: [registry.npmjs.org]
    ports: [443]
    remap: "npm.mirror.test:%d"
`, mdst.Port()), func(e *env, cfg *Config) {
				if tt.resolve {
					cfg.Resolve = func(_ context.Context, h string) ([]netip.Addr, error) {
						if h != "npm.mirror.test" {
							return nil, fmt.Errorf("unexpected name %s", h)
						}
						return []netip.Addr{mdst.Addr()}, nil
					}
				}
			})
			// The sandbox asked for registry.npmjs.org; its resolver answered the
			// mirror's address (or anything: with Resolve the proxy dials the mirror).
			orig := netip.AddrPortFrom(mdst.Addr(), 443)
			e.hosts["registry.npmjs.org:443"] = orig
			e.names[orig.Addr()] = []string{"registry.npmjs.org"}
			resp, err := e.client(false).Get("https://registry.npmjs.org/left-pad")
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, resp)
			want := fmt.Sprintf("host=npm.mirror.test:%d path=/left-pad", mdst.Port())
			if resp.StatusCode != 200 || !strings.Contains(body, want) {
				t.Fatalf("got %d %q, want %q", resp.StatusCode, body, want)
			}
		})
	}
}

func TestServeStops(t *testing.T) {
	e := newEnv(t, "version: 1\nrules: []\n")
	c, err := e.dial(context.Background(), netip.MustParseAddrPort("127.0.0.1:9"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	// Raw TCP to an address no rule admits: closed.
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("denied connection was not closed")
	}
	ev := e.rec.waitKind(t, audit.KindConn, 1)
	if len(ev) != 1 || ev[0].Decision != audit.DecisionDeny || ev[0].Dst != "127.0.0.1:9" {
		t.Fatalf("events %+v", ev)
	}
}
