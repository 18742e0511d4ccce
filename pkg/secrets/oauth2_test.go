package secrets

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/policy"
	"github.com/sluice-dev/sluice/pkg/testutil"
)

const (
	refreshCanary = "rt-CANARY-REFRESH-31c9e07a"
	clientCanary  = "cs-CANARY-CLIENT-77aa01f3"
)

// tokenServer is a loopback OAuth2 token endpoint.
type tokenServer struct {
	*httptest.Server
	mu       sync.Mutex
	calls    atomic.Int64
	issued   int
	refresh  string // the refresh token it currently accepts
	rotate   bool   // issue a new refresh token with each answer
	expires  any    // expires_in value to send
	gate     chan struct{}
	answer   func(w http.ResponseWriter, r *http.Request) bool // true: handled
	lastForm map[string]string
	lastUser string
	verify   func(assertion string) error
}

func newTokenServer(t *testing.T) *tokenServer {
	ts := &tokenServer{refresh: refreshCanary, expires: 3600}
	ts.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ts.calls.Add(1)
		if ts.gate != nil {
			<-ts.gate
		}
		if ts.answer != nil && ts.answer(w, r) {
			return
		}
		r.ParseForm()
		ts.mu.Lock()
		defer ts.mu.Unlock()
		ts.lastForm = map[string]string{}
		for k := range r.PostForm {
			ts.lastForm[k] = r.PostForm.Get(k)
		}
		user, pass, basic := r.BasicAuth()
		ts.lastUser = user
		switch r.PostForm.Get("grant_type") {
		case policy.GrantClientCredentials:
			if !(basic && user == "app" && pass == clientCanary) && !(r.PostForm.Get("client_id") == "app" && r.PostForm.Get("client_secret") == clientCanary) {
				w.WriteHeader(401)
				io.WriteString(w, `{"error":"invalid_client","error_description":"bad secret `+pass+r.PostForm.Get("client_secret")+`"}`)
				return
			}
		case policy.GrantRefreshToken:
			if got := r.PostForm.Get("refresh_token"); got != ts.refresh {
				w.WriteHeader(400)
				io.WriteString(w, `{"error":"invalid_grant","error_description":"refresh token `+got+` is revoked"}`)
				return
			}
		case grantTypeJWTBearer:
			if ts.verify == nil || ts.verify(r.PostForm.Get("assertion")) != nil {
				w.WriteHeader(400)
				io.WriteString(w, `{"error":"invalid_grant"}`)
				return
			}
		default:
			w.WriteHeader(400)
			io.WriteString(w, `{"error":"unsupported_grant_type"}`)
			return
		}
		ts.issued++
		resp := map[string]any{"access_token": fmt.Sprintf("at-%d", ts.issued), "token_type": "Bearer", "expires_in": ts.expires}
		if ts.rotate {
			ts.refresh = fmt.Sprintf("%s-rotated-%d", refreshCanary, ts.issued)
			resp["refresh_token"] = ts.refresh
		}
		json.NewEncoder(w).Encode(resp)
	}))
	t.Cleanup(ts.Close)
	return ts
}

func newTestOAuth2(t *testing.T, logs *bytes.Buffer) (*OAuth2, *Store, *fakeClock) {
	t.Helper()
	st, err := OpenStore(t.TempDir(), KeySource{}, testLogger(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	st.Set(Global, "CLIENT_SECRET", clientCanary)
	st.Set(SandboxScope("box"), "REFRESH", refreshCanary)
	o := NewOAuth2(NewChain(st), st, nil, testLogger(t, logs))
	clk := newFakeClock()
	o.now = clk.Now
	return o, st, clk
}

func TestOAuth2ClientCredentialsCacheAndRefresh(t *testing.T) {
	var logs bytes.Buffer
	o, st, clk := newTestOAuth2(t, &logs)
	ts := newTokenServer(t)
	cfg := &policy.OAuth2{TokenURL: ts.URL + "/token", Grant: policy.GrantClientCredentials, ClientID: "app", ClientSecret: "CLIENT_SECRET", Scopes: []string{"read", "write"}, Audience: "api"}
	ctx := context.Background()
	for i := 0; i < 5; i++ {
		tok, err := o.Token(ctx, "box", "r", cfg)
		if err != nil || tok != "at-1" {
			t.Fatalf("Token #%d = %q, %v", i, tok, err)
		}
		clk.Add(10 * time.Minute)
	}
	if n := ts.calls.Load(); n != 1 {
		t.Fatalf("token requests = %d, want 1 (reused)", n)
	}
	if ts.lastForm["scope"] != "read write" || ts.lastForm["audience"] != "api" || ts.lastUser != "app" {
		t.Fatalf("form %v user %q", ts.lastForm, ts.lastUser)
	}
	// 50 minutes in; expires_in 3600 with a 60 s margin: refreshed at 59 min.
	clk.Add(8*time.Minute + 59*time.Second) // 58:59
	if tok, _ := o.Token(ctx, "box", "r", cfg); tok != "at-1" {
		t.Fatalf("refreshed too early: %q", tok)
	}
	clk.Add(2 * time.Second) // 59:01
	if tok, err := o.Token(ctx, "box", "r", cfg); err != nil || tok != "at-2" {
		t.Fatalf("after expiry Token = %q, %v; want at-2", tok, err)
	}
	if n := ts.calls.Load(); n != 2 {
		t.Fatalf("token requests = %d, want 2", n)
	}
	// Tokens are cached per sandbox and rule.
	if tok, _ := o.Token(ctx, "other", "r", cfg); tok != "at-3" || ts.calls.Load() != 3 {
		t.Fatalf("other sandbox token %q, calls %d", tok, ts.calls.Load())
	}
	if tok, _ := o.Token(ctx, "box", "r2", cfg); tok != "at-4" || ts.calls.Load() != 4 {
		t.Fatalf("other rule token %q, calls %d", tok, ts.calls.Load())
	}
	o.Forget("other")
	if tok, _ := o.Token(ctx, "other", "r", cfg); tok != "at-5" {
		t.Fatalf("after Forget: token %q", tok)
	}
	// Rotating the client secret in the store takes effect on the next call.
	st.Set(Global, "CLIENT_SECRET", "wrong-"+clientCanary)
	_, err := o.Token(ctx, "box", "r", cfg)
	if !errors.Is(err, ErrTokenFailed) || !strings.Contains(err.Error(), "non-2xx status 401 (invalid_client)") {
		t.Fatalf("rotated secret: err = %v", err)
	}
	noLeak(t, "error", err.Error(), clientCanary, refreshCanary)
	noLeak(t, "logs", logs.String(), clientCanary, refreshCanary, "at-1", "at-2")
}

func TestOAuth2RefreshTokenGrantRotation(t *testing.T) {
	var logs bytes.Buffer
	o, st, clk := newTestOAuth2(t, &logs)
	ts := newTokenServer(t)
	ts.rotate = true
	ts.expires = "120" // a string, as some servers send
	cfg := &policy.OAuth2{TokenURL: ts.URL, Grant: policy.GrantRefreshToken, ClientID: "app", RefreshToken: "REFRESH"}
	ctx := context.Background()
	if tok, err := o.Token(ctx, "box", "r", cfg); err != nil || tok != "at-1" {
		t.Fatalf("Token = %q, %v", tok, err)
	}
	if ts.lastForm["refresh_token"] != refreshCanary || ts.lastForm["client_id"] != "app" {
		t.Fatalf("form %v", ts.lastForm)
	}
	clk.Add(100 * time.Second)
	if tok, _ := o.Token(ctx, "box", "r", cfg); tok != "at-1" {
		t.Fatal("not reused")
	}
	clk.Add(10 * time.Second) // 110 s > 120 - 12
	// The server now only accepts the rotated refresh token.
	if tok, err := o.Token(ctx, "box", "r", cfg); err != nil || tok != "at-2" {
		t.Fatalf("refresh with rotated token: %q, %v", tok, err)
	}
	if !strings.Contains(ts.lastForm["refresh_token"], "-rotated-1") {
		t.Fatalf("did not use the rotated refresh token")
	}
	// Each rotation is written back to the store, in the scope it came from.
	if v, err := st.Get(SandboxScope("box"), "REFRESH"); err != nil || v != refreshCanary+"-rotated-2" {
		t.Fatalf("stored refresh token = %q, %v; want the rotated one", v, err)
	}
	if _, err := st.Get(Global, "REFRESH"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("rotated token leaked into the global scope: %v", err)
	}
	// Inputs missing for a sandbox without a refresh token: names the secret.
	_, err := o.Token(ctx, "nobox", "r", cfg)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "REFRESH") {
		t.Fatalf("missing input: %v", err)
	}
	noLeak(t, "logs", logs.String(), refreshCanary, "at-1", "at-2")
	if !strings.Contains(logs.String(), "oauth2 token minted") {
		t.Fatal("no debug log")
	}
	// A revoked refresh token: error has the OAuth code, not the token.
	ts.mu.Lock()
	ts.refresh = "revoked-all"
	ts.mu.Unlock()
	clk.Add(time.Hour)
	_, err = o.Token(ctx, "box", "r", cfg)
	if !errors.Is(err, ErrTokenFailed) || !strings.Contains(err.Error(), "(invalid_grant)") {
		t.Fatalf("revoked: %v", err)
	}
	noLeak(t, "error", err.Error(), refreshCanary)
}

func TestOAuth2Singleflight(t *testing.T) {
	o, _, _ := newTestOAuth2(t, nil)
	ts := newTokenServer(t)
	ts.gate = make(chan struct{})
	cfg := &policy.OAuth2{TokenURL: ts.URL, Grant: policy.GrantRefreshToken, RefreshToken: "REFRESH"}
	var wg sync.WaitGroup
	var bad atomic.Int64
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if tok, err := o.Token(context.Background(), "box", "r", cfg); err != nil || tok != "at-1" {
				bad.Add(1)
			}
		}()
	}
	for ts.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	close(ts.gate)
	wg.Wait()
	if bad.Load() != 0 || ts.calls.Load() != 1 {
		t.Fatalf("bad %d, calls %d; want 0, 1", bad.Load(), ts.calls.Load())
	}
}

func TestOAuth2Failures(t *testing.T) {
	write := func(status int, body string) func(http.ResponseWriter, *http.Request) bool {
		return func(w http.ResponseWriter, _ *http.Request) bool {
			w.WriteHeader(status)
			io.WriteString(w, body)
			return true
		}
	}
	tests := []struct {
		name    string
		answer  func(http.ResponseWriter, *http.Request) bool
		cfg     func(*policy.OAuth2, *OAuth2)
		wantErr string
	}{
		{"timeout", func(w http.ResponseWriter, r *http.Request) bool {
			io.ReadAll(r.Body) // lets the server notice the client going away
			select {
			case <-r.Context().Done():
			case <-time.After(3 * time.Second):
			}
			return true
		}, func(_ *policy.OAuth2, o *OAuth2) { o.timeout = 100 * time.Millisecond }, "oauth2 token request failed: timeout"},
		{"connection refused", nil, func(c *policy.OAuth2, _ *OAuth2) {
			dead := httptest.NewServer(http.NotFoundHandler())
			c.TokenURL = dead.URL
			dead.Close()
		}, "connection error"},
		{"500 echoing input", write(500, `{"error":"server_error `+refreshCanary+`"}`), nil, "non-2xx status 500 (token endpoint"},
		{"malformed", write(200, "<html>"+refreshCanary), nil, "malformed response"},
		{"no access token", write(200, `{"refresh_token":"`+refreshCanary+`"}`), nil, "malformed response"},
		{"bad expires_in", write(200, `{"access_token":"a","expires_in":-5}`), nil, "malformed response"},
		{"token with CRLF", write(200, `{"access_token":"a\r\nX: `+refreshCanary+`"}`), nil, "invalid header in response"},
		{"redirect", func(w http.ResponseWriter, r *http.Request) bool {
			http.Redirect(w, r, "/x?"+refreshCanary, 307)
			return true
		}, nil, "non-2xx status 307"},
		{"wrong token type", write(200, `{"access_token":"a","token_type":"mac"}`), nil, "malformed response"},
		{"bad grant", nil, func(c *policy.OAuth2, _ *OAuth2) { c.Grant = "password" }, "expect one of client_credentials, refresh_token, jwt_bearer"},
		{"bad key", nil, func(c *policy.OAuth2, _ *OAuth2) { c.Grant, c.PrivateKey = policy.GrantJWTBearer, "CLIENT_SECRET" }, "expect a service-account JSON or a PEM"},
		{"missing secret", nil, func(c *policy.OAuth2, _ *OAuth2) { c.RefreshToken = "NOPE" }, `secret NOPE is not set for sandbox "box"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			o, _, _ := newTestOAuth2(t, &logs)
			ts := newTokenServer(t)
			ts.answer = tc.answer
			cfg := &policy.OAuth2{TokenURL: ts.URL, Grant: policy.GrantRefreshToken, ClientID: "app", ClientSecret: "CLIENT_SECRET", RefreshToken: "REFRESH"}
			if tc.cfg != nil {
				tc.cfg(cfg, o)
			}
			tok, err := o.Token(context.Background(), "box", "r", cfg)
			if err == nil || tok != "" || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Token = %q, %v; want error %q", tok, err, tc.wantErr)
			}
			noLeak(t, "error", err.Error(), refreshCanary, clientCanary)
			noLeak(t, "logs", logs.String(), refreshCanary, clientCanary)
		})
	}
}

// TestOAuth2RotationSurvivesRestart: a rotated refresh token is in the
// store file, so a new minter over a reopened store (a restarted daemon)
// refreshes with it; without a persister it is kept in memory.
func TestOAuth2RotationSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	st, err := OpenStore(dir, KeySource{}, testLogger(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	st.Set(Global, "REFRESH", refreshCanary)
	ts := newTokenServer(t)
	ts.rotate = true
	cfg := &policy.OAuth2{TokenURL: ts.URL, Grant: policy.GrantRefreshToken, ClientID: "app", RefreshToken: "REFRESH"}
	o := NewOAuth2(NewChain(st), st, nil, testLogger(t, nil))
	if tok, err := o.Token(context.Background(), "box", "r", cfg); err != nil || tok != "at-1" {
		t.Fatalf("Token = %q, %v", tok, err)
	}
	// "Restart": a fresh store object over the same directory.
	st2, err := OpenStore(dir, KeySource{}, testLogger(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	o2 := NewOAuth2(NewChain(st2), st2, nil, testLogger(t, nil))
	if tok, err := o2.Token(context.Background(), "box", "r", cfg); err != nil || tok != "at-2" {
		t.Fatalf("after restart Token = %q, %v (the old refresh token is revoked)", tok, err)
	}
	if ts.lastForm["refresh_token"] != refreshCanary+"-rotated-1" {
		t.Fatal("restarted minter did not use the rotated refresh token")
	}

	// No persister: the rotation chain lives in memory.
	mem := NewOAuth2(NewChain(Static{"REFRESH": ts.refresh}), nil, nil, testLogger(t, nil))
	clk := newFakeClock()
	mem.now = clk.Now
	for i := 0; i < 3; i++ {
		if _, err := mem.Token(context.Background(), "box", "r", cfg); err != nil {
			t.Fatalf("in-memory rotation #%d: %v", i, err)
		}
		clk.Add(2 * time.Hour)
	}
}

// TestOAuth2JWTBearer: the endpoint receives an RFC 7523 assertion signed
// with the configured key (a Google service-account JSON with RS256, a PEM
// EC key with ES256) and verifies it.
func TestOAuth2JWTBearer(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pk8, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	saJSON, _ := json.Marshal(map[string]string{
		"type": "service_account", "private_key_id": "kid-1", "client_email": "agent@proj.iam.gserviceaccount.com",
		"private_key": string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk8})),
	})
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalECPrivateKey(ecKey)
	ecPEM := string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER}))
	for _, tc := range []struct {
		name, key, clientID, wantIss string
		pub                          crypto.PublicKey
		googleScope                  bool
	}{
		{"google service account", string(saJSON), "", "agent@proj.iam.gserviceaccount.com", &rsaKey.PublicKey, true},
		{"pem ec key", ecPEM, "client-7", "client-7", &ecKey.PublicKey, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			ts := newTokenServer(t)
			var claims map[string]any
			ts.verify = func(a string) error {
				c, err := testutil.VerifyJWT(a, tc.pub)
				claims = c
				return err
			}
			st, _ := OpenStore(t.TempDir(), KeySource{}, testLogger(t, nil))
			st.Set(Global, "SA_KEY", tc.key)
			o := NewOAuth2(NewChain(st), st, nil, testLogger(t, &logs))
			cfg := &policy.OAuth2{TokenURL: ts.URL + "/token", Grant: policy.GrantJWTBearer, ClientID: tc.clientID, PrivateKey: "SA_KEY", Scopes: []string{"a", "b"}}
			tok, err := o.Token(context.Background(), "box", "gcs", cfg)
			if err != nil || tok != "at-1" {
				t.Fatalf("Token = %q, %v", tok, err)
			}
			if claims["iss"] != tc.wantIss || claims["sub"] != tc.wantIss || claims["aud"] != ts.URL+"/token" || claims["scope"] != "a b" {
				t.Fatalf("claims %v", claims)
			}
			if exp, iat := claims["exp"].(float64), claims["iat"].(float64); exp-iat != assertionLifetime.Seconds() {
				t.Fatalf("exp-iat = %v", exp-iat)
			}
			if _, has := ts.lastForm["scope"]; has == tc.googleScope {
				t.Fatalf("form %v", ts.lastForm)
			}
			// A key that signs for someone else is refused by the endpoint.
			other, _ := rsa.GenerateKey(rand.Reader, 2048)
			ts.verify = func(a string) error { _, err := testutil.VerifyJWT(a, &other.PublicKey); return err }
			_, err = o.Token(context.Background(), "box", "other-rule", cfg)
			if !errors.Is(err, ErrTokenFailed) || !strings.Contains(err.Error(), "invalid_grant") {
				t.Fatalf("wrong key: %v", err)
			}
			noLeak(t, "logs", logs.String(), "PRIVATE KEY", tok)
		})
	}
}
