package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/sluice-dev/sluice/pkg/policy"
)

// requestLog is an upstream that records the method and raw request
// target (the request line's target in HTTP/1.1, :path in HTTP/2) of every
// request it receives, with the injected Authorization.
type requestLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *requestLog) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	line := r.Method + " " + r.RequestURI + " auth=" + r.Header.Get("Authorization")
	l.mu.Lock()
	l.lines = append(l.lines, line)
	l.mu.Unlock()
	io.WriteString(w, "upstream saw "+line)
}

func (l *requestLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.lines
	l.lines = nil
	return out
}

// gateVariant is one request of the attack battery: what the proxy must
// answer and, when it forwards, the only request line the upstream may see.
type gateVariant struct {
	name, host, method, target string
	header                     [][2]string
	code                       int    // 200, 400 or 403
	forwarded                  string // "METHOD target" the upstream sees; "" when refused
	// stdlib: Go's own request parsing refuses it before sluice's checks
	// (HTTP/1.1: a bare 400; HTTP/2: the stream is reset).
	stdlib bool
	h2code int // the HTTP/2 answer when it differs from code
}

// gateVariants are the path and method tricks of issue #17. api.test
// allows GET and POST on every path but /admin and /repos/private/**;
// one.test allows only /repos/*; fold.test denies /admin/** whatever the
// case.
func gateVariants() []gateVariant {
	ovr := func(k, v string) [][2]string { return [][2]string{{k, v}} }
	return []gateVariant{
		{name: "control", host: "api.test", method: "GET", target: "/repos/x", code: 200, forwarded: "GET /repos/x"},
		{name: "unreserved decoded", host: "api.test", method: "GET", target: "/repos/%78%2d", code: 200, forwarded: "GET /repos/x-"},
		{name: "escape canonical", host: "api.test", method: "GET", target: "/repos/a%3ab?q=%2F", code: 200, forwarded: "GET /repos/a%3Ab?q=%2F"},
		{name: "dot-dot-semicolon", host: "api.test", method: "GET", target: "/repos/..;/admin", code: 400},
		{name: "dot-dot-backslash", host: "api.test", method: "GET", target: "/repos/..%5Cadmin", code: 400},
		{name: "raw backslash", host: "api.test", method: "GET", target: "/repos/..\\admin", code: 400},
		{name: "encoded dot-dot", host: "api.test", method: "GET", target: "/repos/%2e%2e/admin", code: 400},
		{name: "dot-dot", host: "api.test", method: "GET", target: "/repos/../admin", code: 400},
		{name: "deny subtree", host: "api.test", method: "GET", target: "/repos/private/x", code: 403},
		{name: "double slash past deny", host: "api.test", method: "GET", target: "/repos//private/x", code: 400},
		{name: "leading double slash", host: "api.test", method: "GET", target: "//admin", code: 400},
		{name: "matrix param past deny", host: "api.test", method: "GET", target: "/repos/private;v=1/x", code: 400},
		{name: "encoded slash", host: "api.test", method: "GET", target: "/repos/private%2Fx", code: 400},
		{name: "exact deny", host: "api.test", method: "GET", target: "/admin", code: 403},
		{name: "exact deny, trailing slash", host: "api.test", method: "GET", target: "/admin/", code: 403},
		{name: "case-sensitive by default", host: "api.test", method: "GET", target: "/Admin", code: 200, forwarded: "GET /Admin"},
		{name: "folded deny", host: "fold.test", method: "GET", target: "/Admin/x", code: 403},
		{name: "folded deny, trailing slash", host: "fold.test", method: "GET", target: "/ADMIN/", code: 403},
		{name: "folded other path", host: "fold.test", method: "GET", target: "/Docs", code: 200, forwarded: "GET /Docs"},
		{name: "encoded ? in a segment", host: "one.test", method: "GET", target: "/repos/x%3F/deeper", code: 400},
		{name: "one segment", host: "one.test", method: "GET", target: "/repos/x?/deeper", code: 200, forwarded: "GET /repos/x?/deeper"},
		{name: "one segment, trailing slash", host: "one.test", method: "GET", target: "/repos/x/", code: 403},
		{name: "absolute-form", host: "api.test", method: "GET", target: "https://api.test:{port}/repos/%78", code: 200, forwarded: "GET /repos/x"},
		// HTTP/1.1: the URI's authority is the Host (refused: it is not the
		// TLS server name); HTTP/2: it contradicts :authority.
		{name: "absolute-form other host", host: "api.test", method: "GET", target: "https://evil.test/repos/x", code: 403, h2code: 400},
		{name: "invalid escape", host: "api.test", method: "GET", target: "/repos/%zz", code: 400, stdlib: true},
		{name: "DELETE", host: "api.test", method: "DELETE", target: "/repos/x", code: 403},
		{name: "delete", host: "api.test", method: "delete", target: "/repos/x", code: 400},
		{name: "Delete", host: "api.test", method: "Delete", target: "/repos/x", code: 400},
		{name: "X-HTTP-Method-Override", host: "api.test", method: "POST", target: "/repos/x", header: ovr("X-HTTP-Method-Override", "DELETE"), code: 403},
		{name: "X-Method-Override lower", host: "api.test", method: "POST", target: "/repos/x", header: ovr("X-Method-Override", "delete"), code: 403},
		{name: "X-HTTP-Method", host: "api.test", method: "GET", target: "/repos/x", header: ovr("X-HTTP-Method", "DELETE"), code: 403},
		{name: "_method", host: "api.test", method: "POST", target: "/repos/x?_method=DELETE", code: 403},
		{name: "allowed override", host: "api.test", method: "POST", target: "/repos/x", header: ovr("X-HTTP-Method-Override", "GET"), code: 200, forwarded: "POST /repos/x"},
	}
}

func gatePolicy(port uint16) string {
	return fmt.Sprintf(`
version: 1
rules:
  - name: api
    hosts: [api.test]
    ports: [%[1]d]
    methods: [GET, POST]
    headers: [{name: Authorization, type: secret, value: "Bearer {TOKEN}"}]
  - name: no-admin
    hosts: [api.test]
    paths: ["/admin"]
    action: deny
  - name: no-private
    hosts: [api.test]
    paths: ["/repos/private/**"]
    action: deny
  - name: one
    hosts: [one.test]
    paths: ["/repos/*"]
    headers: [{name: Authorization, type: secret, value: "Bearer {TOKEN}"}]
  - name: fold
    hosts: [fold.test]
    headers: [{name: Authorization, type: secret, value: "Bearer {TOKEN}"}]
  - name: fold-no-admin
    hosts: [fold.test]
    paths: ["/admin/**"]
    action: deny
    case_insensitive_paths: true
`, port)
}

// TestGateVariants sends every variant over HTTP/1.1 and HTTP/2 (raw
// frames: Go's client would clean some targets itself) and checks the
// answer, the request line the upstream received (nothing for a refusal)
// and that `sluice policy explain` gives the same answer.
func TestGateVariants(t *testing.T) {
	t.Parallel()
	log := &requestLog{}
	up := newUpstream(t, "127.0.0.1", log)
	dst := addrPort(t, up.URL)
	e := newEnv(t, gatePolicy(dst.Port()))
	for _, h := range []string{"api.test", "one.test", "fold.test"} {
		e.bind(h, dst)
	}
	for _, proto := range []string{"h1", "h2"} {
		t.Run(proto, func(t *testing.T) {
			for _, v := range gateVariants() {
				t.Run(v.name, func(t *testing.T) {
					log.take()
					v.target = strings.ReplaceAll(v.target, "{port}", fmt.Sprint(dst.Port()))
					if proto == "h2" && v.h2code != 0 {
						v.code = v.h2code
					}
					code, body := gateSend(t, e, dst, proto, v.host, v.method, v.target, v.header)
					if v.stdlib && proto == "h2" && code == 0 {
						code = 400 // stream reset by the HTTP/2 server
					}
					if code != v.code {
						t.Errorf("%s %s: %d %q, want %d", v.method, v.target, code, body, v.code)
					}
					if code >= 400 && !v.stdlib && !strings.Contains(body, "sluice policy") {
						t.Errorf("refusal body does not name sluice policy: %q", body)
					}
					var want []string
					if v.forwarded != "" {
						want = []string{v.forwarded + " auth=Bearer s3cr3t-token-value"}
					}
					if got := log.take(); strings.Join(got, "\n") != strings.Join(want, "\n") {
						t.Errorf("%s %s: upstream saw %q, want %q", v.method, v.target, got, want)
					}
					if v.target[0] == '/' { // explain takes a URL: its target is origin-form
						explainAgrees(t, e.pol, v.method, fmt.Sprintf("https://%s:%d%s", v.host, dst.Port(), v.target), v.header, code)
					}
				})
			}
		})
	}
}

// explainAgrees checks that explain answers as the proxy did (code 200,
// 400 or 403).
func explainAgrees(t *testing.T, pol *policy.Policy, method, url string, header [][2]string, code int) {
	t.Helper()
	h := http.Header{}
	for _, kv := range header {
		h.Add(kv[0], kv[1])
	}
	ex, err := pol.ExplainRequest(method, url, h)
	if err != nil {
		t.Fatalf("explain %s %s: %v", method, url, err)
	}
	want := code
	if code == 200 {
		want = 0
	}
	if ex.Allowed != (code == 200) || ex.Status != want {
		t.Errorf("explain %s %s: allowed %v status %d (%s), proxy answered %d", method, url, ex.Allowed, ex.Status, ex.Reason, code)
	}
}

// gateSend sends one request on a new TLS connection, HTTP/1.1 or HTTP/2,
// and returns the status (0 when the proxy reset the stream) and body.
func gateSend(t *testing.T, e *env, dst netip.AddrPort, proto, host, method, target string, header [][2]string) (int, string) {
	t.Helper()
	if proto == "h1" {
		var b strings.Builder
		fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n", method, target, host, dst.Port())
		for _, kv := range header {
			fmt.Fprintf(&b, "%s: %s\r\n", kv[0], kv[1])
		}
		b.WriteString("\r\n")
		resp, body := rawTLS(t, e, dst, host, b.String())
		return resp.StatusCode, body
	}
	fields := [][2]string{{":method", method}, {":scheme", "https"}, {":authority", fmt.Sprintf("%s:%d", host, dst.Port())}, {":path", target}}
	for _, kv := range header {
		fields = append(fields, [2]string{strings.ToLower(kv[0]), kv[1]})
	}
	return rawH2(t, e, dst, host, fields)
}

// openH2 opens a raw HTTP/2 client connection through the proxy to dst
// (TLS with SNI sni, the preface and SETTINGS sent, closed with the test):
// frames are written to bw, flushed by the caller, and read from fr.
func openH2(t *testing.T, e *env, dst netip.AddrPort, sni string, timeout time.Duration) (*http2.Framer, *bufio.Writer) {
	t.Helper()
	c, err := e.dial(context.Background(), dst)
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(c, &tls.Config{ServerName: sni, RootCAs: e.sandbox, NextProtos: []string{"h2"}})
	t.Cleanup(func() { tc.Close() })
	tc.SetDeadline(time.Now().Add(timeout))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("negotiated %q", p)
	}
	bw := bufio.NewWriter(tc)
	io.WriteString(bw, http2.ClientPreface)
	fr := http2.NewFramer(bw, tc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.WriteSettings()
	return fr, bw
}

// writeH2Headers writes a HEADERS frame of the raw fields on stream 1 and
// flushes it.
func writeH2Headers(t *testing.T, fr *http2.Framer, bw *bufio.Writer, fields [][2]string, endStream bool) {
	t.Helper()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, kv := range fields {
		enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
	}
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: endStream, EndHeaders: true})
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
}

// rawH2 sends one HTTP/2 request built from raw header fields.
func rawH2(t *testing.T, e *env, dst netip.AddrPort, sni string, fields [][2]string) (int, string) {
	t.Helper()
	fr, bw := openH2(t, e, dst, sni, 10*time.Second)
	writeH2Headers(t, fr, bw, fields, true)
	status := 0
	var body bytes.Buffer
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading frames: %v (status %d)", err, status)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
				bw.Flush()
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID != 1 {
				continue
			}
			if s := f.PseudoValue("status"); s != "" && status == 0 {
				fmt.Sscan(s, &status)
				if status < 200 {
					status = 0
				}
			}
			if f.StreamEnded() {
				return status, body.String()
			}
		case *http2.DataFrame:
			if f.StreamID != 1 {
				continue
			}
			body.Write(f.Data())
			if f.StreamEnded() {
				return status, body.String()
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == 1 {
				return 0, "reset: " + f.ErrCode.String()
			}
		case *http2.GoAwayFrame:
			return 0, "goaway: " + f.ErrCode.String()
		}
	}
}

// TestGateCorporateCallback runs the variants of issue #17 against the
// example policy testdata/policies/corporate-callback.yaml (a callback
// injects the credentials; /admin/** is denied) through the proxy and
// explain.
func TestGateCorporateCallback(t *testing.T) {
	t.Parallel()
	log := &requestLog{}
	up := newUpstream(t, "127.0.0.1", log)
	dst := addrPort(t, up.URL)
	pol, err := policy.Load("../../testdata/policies/corporate-callback.yaml")
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, "version: 1\nrules: [{name: x, hosts: [x.test]}]\n", func(e *env, _ *Config) {
		e.sb.Callbacks = fakeCallbacks{hdrs: map[string]string{"Authorization": "Bearer s3cr3t-token-value"}}
	})
	e.pol = pol
	e.bind("billing.api.corp.internal", dst)
	for _, tt := range []struct {
		method, target string
		code           int
	}{
		{"GET", "/v1/invoices", 200},
		{"GET", "/admin/users", 403},
		{"GET", "//admin/users", 400},
		{"GET", "/admin;v=1/users", 400},
		{"GET", "/v1/..;/admin/users", 400},
		{"GET", "/v1/%2e%2e/admin/users", 400},
		{"GET", "/admin%2Fusers", 400},
		{"GET", "/admin/", 403},
		{"GET", "/admin", 403},
		{"get", "/v1/invoices", 400},
	} {
		for _, proto := range []string{"h1", "h2"} {
			t.Run(proto+" "+tt.method+" "+tt.target, func(t *testing.T) {
				log.take()
				code, body := gateSend(t, e, dst, proto, "billing.api.corp.internal", tt.method, tt.target, nil)
				if code != tt.code {
					t.Errorf("%d %q, want %d", code, body, tt.code)
				}
				got := log.take()
				if tt.code == 200 && (len(got) != 1 || got[0] != tt.method+" "+tt.target+" auth=Bearer s3cr3t-token-value") {
					t.Errorf("upstream saw %q", got)
				}
				if tt.code != 200 && len(got) != 0 {
					t.Errorf("upstream saw %q for a refused request", got)
				}
				explainAgrees(t, pol, tt.method, fmt.Sprintf("https://billing.api.corp.internal:%d%s", dst.Port(), tt.target), nil, code)
			})
		}
	}
}

// TestGateCleartext: a rule that injects credentials refuses a cleartext
// HTTP request with 403 (the upstream sees nothing) unless it sets
// insecure_http; plaintext headers and rules without credentials are not
// affected.
func TestGateCleartext(t *testing.T) {
	t.Parallel()
	log := &requestLog{}
	up := newPlainUpstream(t, "127.0.0.1", log)
	dst := addrPort(t, up.URL)
	e := newEnv(t, fmt.Sprintf(`
version: 1
rules:
  - name: secret
    hosts: [secret.test]
    headers: [{name: Authorization, type: secret, value: "Bearer {TOKEN}"}]
  - name: opaque
    hosts: [opaque.test]
    headers: [{name: X-Key, type: opaque, value: "set-later"}]
  - name: callback
    hosts: [callback.test]
    callback: {url: "https://creds.test/v1"}
  - name: opted-in
    hosts: [optin.test]
    ports: [%d]
    headers: [{name: Authorization, type: secret, value: "Bearer {TOKEN}"}]
    insecure_http: true
  - name: public
    hosts: [public.test]
    headers: [{name: X-Client, type: plaintext, value: "sluice-test"}]
  - name: bare
    hosts: [bare.test]
`, dst.Port()), func(e *env, _ *Config) {
		e.sb.Callbacks = fakeCallbacks{hdrs: map[string]string{"Authorization": "Bearer s3cr3t-token-value"}}
	})
	for _, h := range []string{"secret.test", "opaque.test", "callback.test", "optin.test", "public.test", "bare.test"} {
		e.bind(h, dst)
	}
	c := e.client(false)
	for _, tt := range []struct {
		host string
		code int
		saw  string
	}{
		{"secret.test", 403, ""},
		{"opaque.test", 403, ""},
		{"callback.test", 403, ""},
		{"optin.test", 200, "GET /x auth=Bearer s3cr3t-token-value"},
		{"public.test", 200, "GET /x auth="},
		{"bare.test", 200, "GET /x auth="},
	} {
		t.Run(tt.host, func(t *testing.T) {
			log.take()
			url := fmt.Sprintf("http://%s:%d/x", tt.host, dst.Port())
			resp, err := c.Get(url)
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, resp)
			if resp.StatusCode != tt.code {
				t.Fatalf("%d %q, want %d", resp.StatusCode, body, tt.code)
			}
			if tt.code == 403 && (!strings.Contains(body, "sluice policy") || !strings.Contains(body, "only sent over TLS") || !strings.Contains(body, "insecure_http")) {
				t.Fatalf("refusal does not say why: %q", body)
			}
			if strings.Contains(body, "s3cr3t-token-value") && tt.code == 403 {
				t.Fatal("the refusal shows the secret")
			}
			got := log.take()
			if tt.saw == "" && len(got) != 0 || tt.saw != "" && (len(got) != 1 || got[0] != tt.saw) {
				t.Fatalf("upstream saw %q, want %q", got, tt.saw)
			}
			ex, err := e.pol.Explain("GET", url)
			if err != nil {
				t.Fatal(err)
			}
			if ex.Allowed != (tt.code == 200) {
				t.Fatalf("explain allowed=%v (%s), proxy %d", ex.Allowed, ex.Reason, tt.code)
			}
		})
	}
}
