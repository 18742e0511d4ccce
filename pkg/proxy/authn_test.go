package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/secrets"
	"github.com/sluice-dev/sluice/pkg/testutil"
)

const (
	clientSecretCanary = "cs-CANARY-PROXY-9b21f0"
	awsKeyCanary       = "aws-SECRET-CANARY-PROXY-5d7e1c"
	tokenBodyCanary    = "endpoint-body-CANARY-41aa"
)

// tokenEndpoint is a loopback TLS OAuth2 token endpoint (signed by
// upstreamCA): it checks client_credentials and issues at-1, at-2, ...
type tokenEndpoint struct {
	addr    string
	calls   atomic.Int64
	fail    atomic.Bool // answer 500 with a body that must not leak
	expires atomic.Int64
	mu      sync.Mutex
	forms   []map[string]string
}

func newTokenEndpoint(t *testing.T) *tokenEndpoint {
	te := &tokenEndpoint{}
	te.expires.Store(3600)
	srv := newUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := te.calls.Add(1)
		r.ParseForm()
		form := map[string]string{}
		for k := range r.PostForm {
			form[k] = r.PostForm.Get(k)
		}
		te.mu.Lock()
		te.forms = append(te.forms, form)
		te.mu.Unlock()
		if te.fail.Load() {
			w.WriteHeader(500)
			io.WriteString(w, `{"error":"server_error","error_description":"`+tokenBodyCanary+`"}`)
			return
		}
		if user, pass, _ := r.BasicAuth(); user != "agent" || pass != clientSecretCanary || form["grant_type"] != "client_credentials" {
			w.WriteHeader(401)
			io.WriteString(w, `{"error":"invalid_client"}`)
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"access_token": fmt.Sprintf("at-%d", n), "token_type": "Bearer", "expires_in": te.expires.Load()})
	}))
	te.addr = srv.Listener.Addr().String()
	return te
}

// tokenClient reaches auth.test at the endpoint and trusts upstreamCA, as
// the daemon's minter trusts the configured upstream CAs.
func (te *tokenEndpoint) client() *http.Client {
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: upstreamPool()},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, te.addr)
		},
	}}
}

// TestOAuth2Injection (acceptance 1): the upstream sees the endpoint's
// token, reused within its life and replaced after expires_in; the form
// carries grant_type and scopes; the client secret reaches neither the
// upstream nor the sandbox nor the logs; a failing endpoint gives 502 with
// nothing forwarded and an audit event.
func TestOAuth2Injection(t *testing.T) {
	te := newTokenEndpoint(t)
	var seen atomic.Int64
	var upMu sync.Mutex
	var upSaw bytes.Buffer
	up := newUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		upMu.Lock()
		r.Header.Write(&upSaw)
		upMu.Unlock()
		// Upper-cased so that echo redaction leaves it alone.
		fmt.Fprintf(w, "auth=%s", strings.ToUpper(r.Header.Get("Authorization")))
	}))
	dst := addrPort(t, up.URL)
	var logs bytes.Buffer
	var logMu sync.Mutex
	logger := slog.New(slog.NewTextHandler(&lockedWriter{w: &logs, mu: &logMu}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e := newEnv(t, fmt.Sprintf(`
version: 1
rules:
  - name: corp
    hosts: [api.test]
    ports: [%d]
    oauth2:
      token_url: https://auth.test/token
      grant: client_credentials
      client_id: agent
      client_secret: "{CORP_CLIENT_SECRET}"
      scopes: [read, write]
`, dst.Port()), func(e *env, _ *Config) {
		chain := secrets.NewChain(secrets.Static{"CORP_CLIENT_SECRET": clientSecretCanary})
		e.sb.Tokens = secrets.NewOAuth2(chain, nil, te.client(), logger)
	})
	e.bind("api.test", dst)
	url := fmt.Sprintf("https://api.test:%d/v1/x", dst.Port())
	var sandboxSaw strings.Builder
	get := func(c *http.Client) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("Authorization", "Bearer sandbox-fake")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp)
		sandboxSaw.WriteString(body)
		resp.Header.Write(&sandboxSaw)
		return resp.StatusCode, body
	}
	for _, h2 := range []bool{false, true} {
		c := e.client(h2)
		for i := 0; i < 2; i++ {
			if code, body := get(c); code != 200 || body != "auth=BEARER AT-1" {
				t.Fatalf("h2=%v #%d: %d %q", h2, i, code, body)
			}
		}
	}
	if n := te.calls.Load(); n != 1 {
		t.Fatalf("token endpoint called %d times within the token's life, want 1", n)
	}
	te.mu.Lock()
	if f := te.forms[0]; f["grant_type"] != "client_credentials" || f["scope"] != "read write" {
		t.Fatalf("token form %v", f)
	}
	te.mu.Unlock()

	// A short-lived token is replaced after expires_in.
	te.expires.Store(1)
	short := newEnv(t, fmt.Sprintf(`
version: 1
rules:
  - name: corp
    hosts: [api.test]
    ports: [%d]
    oauth2: {token_url: "https://auth.test/token", grant: client_credentials, client_id: agent, client_secret: "{CORP_CLIENT_SECRET}"}
`, dst.Port()), func(s *env, _ *Config) {
		s.sb.Tokens = secrets.NewOAuth2(secrets.NewChain(secrets.Static{"CORP_CLIENT_SECRET": clientSecretCanary}), nil, te.client(), logger)
	})
	short.bind("api.test", dst)
	sc := short.client(false)
	resp, err := sc.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	first := readAll(t, resp)
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := sc.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		if body := readAll(t, resp); body != first {
			if !strings.HasPrefix(body, "auth=BEARER AT-") {
				t.Fatalf("after expiry: %q", body)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("token %q still used 10s after expires_in 1", first)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// The endpoint fails: 502, nothing forwarded, an audit event without
	// the endpoint's answer.
	te.fail.Store(true)
	failing := newEnv(t, fmt.Sprintf(`
version: 1
rules:
  - name: corp
    hosts: [api.test]
    ports: [%d]
    oauth2: {token_url: "https://auth.test/token", grant: client_credentials, client_id: agent, client_secret: "{CORP_CLIENT_SECRET}"}
`, dst.Port()), func(f *env, _ *Config) {
		f.sb.Tokens = secrets.NewOAuth2(secrets.NewChain(secrets.Static{"CORP_CLIENT_SECRET": clientSecretCanary}), nil, te.client(), logger)
	})
	failing.bind("api.test", dst)
	before := seen.Load()
	for _, h2 := range []bool{false, true} {
		resp, err := failing.client(h2).Get(url)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp)
		sandboxSaw.WriteString(body)
		if resp.StatusCode != 502 || !strings.Contains(body, "oauth2 token for rule corp") || !strings.Contains(body, "non-2xx status 500") {
			t.Fatalf("failing endpoint: %d %q", resp.StatusCode, body)
		}
	}
	if seen.Load() != before {
		t.Fatal("the upstream received a request without its token")
	}
	evs := failing.rec.waitKind(t, audit.KindHTTP, 2)
	if len(evs) != 2 || evs[0].Decision != audit.DecisionError || evs[0].Status != 502 || !strings.Contains(evs[0].Reason, "oauth2 token request failed") {
		t.Fatalf("audit events %+v", evs)
	}

	var events bytes.Buffer
	for _, r := range []*recorder{e.rec, short.rec, failing.rec} {
		r.mu.Lock()
		for _, ev := range r.ev {
			json.NewEncoder(&events).Encode(ev)
		}
		r.mu.Unlock()
	}
	logMu.Lock()
	defer logMu.Unlock()
	upMu.Lock()
	defer upMu.Unlock()
	for what, s := range map[string]string{"sandbox": sandboxSaw.String(), "upstream": upSaw.String(), "logs": logs.String(), "audit": events.String()} {
		for _, v := range []string{clientSecretCanary, tokenBodyCanary} {
			if strings.Contains(s, v) {
				t.Errorf("%s contains %q", what, v)
			}
		}
	}
	if strings.Contains(upSaw.String(), "sandbox-fake") {
		t.Error("the sandbox's Authorization reached the upstream")
	}
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestSigV4Injection (acceptance 4): a loopback server verifies every
// forwarded request with the AWS SDK's signer; the access key id is in the
// credential scope; the sandbox's own signature is replaced; bodies of
// known length are hashed, streamed ones sent UNSIGNED-PAYLOAD; the secret
// key never reaches the upstream or the sandbox.
func TestSigV4Injection(t *testing.T) {
	type result struct {
		err  error
		hash string
		raw  string
	}
	var mu sync.Mutex
	var results []result
	up := newUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var raw bytes.Buffer
		r.Header.Write(&raw)
		raw.WriteString(r.URL.String())
		raw.Write(body)
		id, err := testutil.VerifySigV4(r, body, "AKIDSLUICETEST", awsKeyCanary, "", "us-east-1", "s3")
		if err == nil && id != "AKIDSLUICETEST" {
			err = fmt.Errorf("access key id %q", id)
		}
		if err == nil && (strings.Contains(r.URL.RawQuery, "X-Amz-Signature") || r.Header.Get("X-Amz-Security-Token") != "") {
			err = fmt.Errorf("sandbox signature parts forwarded: %s %v", r.URL.RawQuery, r.Header)
		}
		mu.Lock()
		results = append(results, result{err, r.Header.Get("X-Amz-Content-Sha256"), raw.String()})
		mu.Unlock()
		if err != nil {
			http.Error(w, err.Error(), 403)
			return
		}
		fmt.Fprintf(w, "ok %d", len(body))
	}))
	dst := addrPort(t, up.URL)
	e := newEnv(t, fmt.Sprintf(`
version: 1
rules:
  - name: s3
    hosts: [s3.test]
    ports: [%d]
    aws_sigv4:
      region: us-east-1
      service: s3
      access_key_id: AKIDSLUICETEST
      secret_access_key: "{AWS_SECRET_ACCESS_KEY}"
`, dst.Port()), func(e *env, _ *Config) {
		e.sb.Signer = secrets.NewSigV4(secrets.NewChain(secrets.Static{"AWS_SECRET_ACCESS_KEY": awsKeyCanary}))
	})
	e.bind("s3.test", dst)
	base := fmt.Sprintf("https://s3.test:%d", dst.Port())
	var sandboxSaw strings.Builder
	for _, h2 := range []bool{false, true} {
		c := e.client(h2)
		for _, tc := range []struct {
			name, method, path string
			body               io.Reader
			wantHash           string
		}{
			{"get with presigned query", "GET", "/bucket/a%20key?list-type=2&X-Amz-Signature=forged&X-Amz-Credential=SANDBOX&prefix=x+y", nil, secrets.EmptyPayloadHash},
			{"put small body", "PUT", "/bucket/obj", strings.NewReader(`{"hello":"world"}`), payloadHashOf([]byte(`{"hello":"world"}`))},
			{"put streamed body", "PUT", "/bucket/stream", io.MultiReader(strings.NewReader("chunk-1;"), strings.NewReader("chunk-2")), secrets.UnsignedPayload},
		} {
			req, _ := http.NewRequest(tc.method, base+tc.path, tc.body)
			req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=SANDBOXKEY/20200101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00")
			req.Header.Set("X-Amz-Date", "20200101T000000Z")
			req.Header.Set("X-Amz-Security-Token", "sandbox-session")
			req.Header.Set("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD")
			req.Header.Set("X-Amz-Meta-User", "alice")
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, resp)
			sandboxSaw.WriteString(body)
			resp.Header.Write(&sandboxSaw)
			if resp.StatusCode != 200 {
				t.Fatalf("h2=%v %s: %d %q", h2, tc.name, resp.StatusCode, body)
			}
			mu.Lock()
			last := results[len(results)-1]
			mu.Unlock()
			if last.hash != tc.wantHash {
				t.Fatalf("h2=%v %s: payload hash %q, want %q", h2, tc.name, last.hash, tc.wantHash)
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(results) != 6 {
		t.Fatalf("upstream saw %d requests, want 6", len(results))
	}
	for _, r := range results {
		if r.err != nil {
			t.Errorf("verification: %v", r.err)
		}
		if strings.Contains(r.raw, awsKeyCanary) || strings.Contains(r.raw, "SANDBOXKEY") || strings.Contains(r.raw, "sandbox-session") {
			t.Errorf("upstream saw the secret key or the sandbox's signature:\n%s", r.raw)
		}
	}
	if strings.Contains(sandboxSaw.String(), awsKeyCanary) {
		t.Error("the sandbox saw the secret key")
	}
	for _, ev := range e.rec.kind(audit.KindHTTP) {
		if ev.Decision != audit.DecisionAllow || ev.Rule != "s3" || !strings.Contains(strings.Join(ev.Injected, ","), "Authorization") {
			t.Errorf("http event %+v", ev)
		}
	}
}

func payloadHashOf(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
