package proxy

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"testing"
)

// TestEchoH2ClientHTTP11Upstream: the echo paths of TestEchoEveryPath with
// an HTTP/2 client in front of an HTTP/1.1-only upstream (the HTTP/2 front
// end translating): content-coded bodies, chunked trailers, 103 headers,
// reason phrases and a malformed head quoted in the 502 never get the
// secret or an encoding of it to the sandbox.
func TestEchoH2ClientHTTP11Upstream(t *testing.T) {
	t.Parallel()
	up := httptest.NewUnstartedServer(echoUpstream(t))
	up.Config.ErrorLog = log.New(io.Discard, "", 0)
	up.TLS = upstreamCA.TLSConfig()
	up.TLS.NextProtos = []string{"http/1.1"}
	up.StartTLS()
	t.Cleanup(up.Close)
	dst := addrPort(t, up.URL)
	e := echoEnv(t, dst.Port())
	e.bind("api.test", dst)
	base := fmt.Sprintf("https://api.test:%d", dst.Port())
	c := e.client(true)
	check := func(where, s string) {
		t.Helper()
		if how := reveals(s, echoSecret); how != "" {
			t.Errorf("%s reveals the secret (%s):\n%s", where, how, s)
		}
	}
	get := func(path string, trace *httptrace.ClientTrace) (*http.Response, string) {
		t.Helper()
		ctx := context.Background()
		if trace != nil {
			ctx = httptrace.WithClientTrace(ctx, trace)
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		body := readAll(t, resp)
		if resp.ProtoMajor != 2 {
			t.Fatalf("%s: answered over %s, want HTTP/2", path, resp.Proto)
		}
		check(path+" header", fmt.Sprint(resp.Header))
		check(path+" trailer", fmt.Sprint(resp.Trailer))
		return resp, body
	}
	auth := "Bearer " + echoSecret
	for _, coding := range []string{"identity", "gzip", "deflate", "rawdeflate", "br", "zstd", "gzip,br"} {
		resp, body := get("/body/"+coding, nil)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "" || !strings.Contains(body, Redacted) {
			t.Fatalf("%s: %d %q %q", coding, resp.StatusCode, resp.Header.Get("Content-Encoding"), body)
		}
		lines := strings.Split(strings.TrimSuffix(body, "\n"), "\n")
		if want := strings.Count(echoPayload(auth), "\n"); len(lines) != want {
			t.Fatalf("%s: %d lines, want %d", coding, len(lines), want)
		}
		for _, l := range lines {
			check(coding+" body line", l)
		}
	}
	resp, _ := get("/trailer", nil)
	for _, k := range []string{"X-Echo", "X-Echo-Hex", "X-Undeclared"} {
		if v := resp.Trailer.Get(k); !strings.Contains(v, Redacted) {
			t.Errorf("trailer %s = %q, want it delivered and redacted", k, v)
		}
	}
	var early []textproto.MIMEHeader
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		early = append(early, h)
		return nil
	}}
	if _, body := get("/early", trace); body != "final answer\n" || len(early) != 1 || !strings.Contains(early[0].Get("X-Early"), Redacted) {
		t.Fatalf("early: %q, 1xx %v", body, early)
	}
	check("103 header", fmt.Sprint(early))
	early = nil
	if resp, body := get("/reason", trace); resp.StatusCode != 200 || body != "ok\n" {
		t.Fatalf("reason: %d %q", resp.StatusCode, body)
	}
	check("1xx of /reason", fmt.Sprint(early))
	if resp, body := get("/badhead", nil); resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, Redacted) {
		t.Fatalf("malformed head: %d %q", resp.StatusCode, body)
	} else {
		check("502 body", body)
	}
}
