package secrets

import (
	"bytes"
	"context"
	"encoding/json"
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
		case GrantClientCredentials:
			if !(basic && user == "app" && pass == clientCanary) && !(r.PostForm.Get("client_id") == "app" && r.PostForm.Get("client_secret") == clientCanary) {
				w.WriteHeader(401)
				io.WriteString(w, `{"error":"invalid_client","error_description":"bad secret `+pass+r.PostForm.Get("client_secret")+`"}`)
				return
			}
		case GrantRefreshToken:
			if got := r.PostForm.Get("refresh_token"); got != ts.refresh {
				w.WriteHeader(400)
				io.WriteString(w, `{"error":"invalid_grant","error_description":"refresh token `+got+` is revoked"}`)
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
	st, err := NewMemoryStore(testLogger(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	st.Set(Global, "CLIENT_SECRET", clientCanary)
	st.Set(SandboxScope("box"), "REFRESH", refreshCanary)
	o := NewOAuth2(NewChain(st), nil, testLogger(t, logs))
	clk := newFakeClock()
	o.now = clk.Now
	return o, st, clk
}

func TestOAuth2ClientCredentialsCacheAndRefresh(t *testing.T) {
	var logs bytes.Buffer
	o, st, clk := newTestOAuth2(t, &logs)
	ts := newTokenServer(t)
	cfg := OAuth2Config{TokenURL: ts.URL + "/token", Grant: GrantClientCredentials, ClientID: "app", ClientSecret: "CLIENT_SECRET", Scopes: []string{"read", "write"}, Params: map[string]string{"audience": "api"}}
	ctx := context.Background()
	for i := 0; i < 5; i++ {
		tok, err := o.Token(ctx, "box", cfg)
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
	if tok, _ := o.Token(ctx, "box", cfg); tok != "at-1" {
		t.Fatalf("refreshed too early: %q", tok)
	}
	clk.Add(2 * time.Second) // 59:01
	if tok, err := o.Token(ctx, "box", cfg); err != nil || tok != "at-2" {
		t.Fatalf("after expiry Token = %q, %v; want at-2", tok, err)
	}
	if n := ts.calls.Load(); n != 2 {
		t.Fatalf("token requests = %d, want 2", n)
	}
	// Another sandbox whose inputs resolve to the same values shares the
	// token (same credential, one refresh chain).
	if tok, _ := o.Token(ctx, "other", cfg); tok != "at-2" || ts.calls.Load() != 2 {
		t.Fatalf("other sandbox token %q, calls %d", tok, ts.calls.Load())
	}
	// Rotating the client secret in the store takes effect on the next call.
	st.Set(Global, "CLIENT_SECRET", "wrong-"+clientCanary)
	_, err := o.Token(ctx, "box", cfg)
	if !errors.Is(err, ErrTokenFailed) || !strings.Contains(err.Error(), "non-2xx status 401 (invalid_client)") {
		t.Fatalf("rotated secret: err = %v", err)
	}
	noLeak(t, "error", err.Error(), clientCanary, refreshCanary)
	noLeak(t, "logs", logs.String(), clientCanary, refreshCanary, "at-1", "at-2")
	// Params style.
	st.Set(Global, "CLIENT_SECRET", clientCanary)
	cfg.AuthStyle = AuthParams
	if tok, err := o.Token(ctx, "box", cfg); err != nil || tok != "at-3" || ts.lastUser != "" || ts.lastForm["client_id"] != "app" {
		t.Fatalf("params style: %q %v %v", tok, err, ts.lastForm)
	}
}

func TestOAuth2RefreshTokenGrantRotation(t *testing.T) {
	var logs bytes.Buffer
	o, _, clk := newTestOAuth2(t, &logs)
	ts := newTokenServer(t)
	ts.rotate = true
	ts.expires = "120" // a string, as some servers send
	cfg := OAuth2Config{TokenURL: ts.URL, Grant: GrantRefreshToken, ClientID: "app", RefreshToken: "REFRESH", AuthStyle: AuthParams}
	ctx := context.Background()
	if tok, err := o.Token(ctx, "box", cfg); err != nil || tok != "at-1" {
		t.Fatalf("Token = %q, %v", tok, err)
	}
	if ts.lastForm["refresh_token"] != refreshCanary || ts.lastForm["client_id"] != "app" {
		t.Fatalf("form %v", ts.lastForm)
	}
	clk.Add(100 * time.Second)
	if tok, _ := o.Token(ctx, "box", cfg); tok != "at-1" {
		t.Fatal("not reused")
	}
	clk.Add(10 * time.Second) // 110 s > 120 - 12
	// The server now only accepts the rotated refresh token.
	if tok, err := o.Token(ctx, "box", cfg); err != nil || tok != "at-2" {
		t.Fatalf("refresh with rotated token: %q, %v", tok, err)
	}
	if !strings.Contains(ts.lastForm["refresh_token"], "-rotated-1") {
		t.Fatalf("did not use the rotated refresh token")
	}
	// Inputs missing for a sandbox without a refresh token: names the secret.
	_, err := o.Token(ctx, "nobox", cfg)
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
	_, err = o.Token(ctx, "box", cfg)
	if !errors.Is(err, ErrTokenFailed) || !strings.Contains(err.Error(), "(invalid_grant)") {
		t.Fatalf("revoked: %v", err)
	}
	noLeak(t, "error", err.Error(), refreshCanary)
}

func TestOAuth2Singleflight(t *testing.T) {
	o, _, _ := newTestOAuth2(t, nil)
	ts := newTokenServer(t)
	ts.gate = make(chan struct{})
	cfg := OAuth2Config{TokenURL: ts.URL, Grant: GrantRefreshToken, RefreshToken: "REFRESH"}
	var wg sync.WaitGroup
	var bad atomic.Int64
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if tok, err := o.Token(context.Background(), "box", cfg); err != nil || tok != "at-1" {
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
		cfg     func(*OAuth2Config)
		wantErr string
	}{
		{"timeout", func(w http.ResponseWriter, r *http.Request) bool {
			io.ReadAll(r.Body) // lets the server notice the client going away
			select {
			case <-r.Context().Done():
			case <-time.After(3 * time.Second):
			}
			return true
		}, func(c *OAuth2Config) { c.Timeout = 100 * time.Millisecond }, "oauth2 token request failed: timeout"},
		{"connection refused", nil, func(c *OAuth2Config) {
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
		{"bad grant", nil, func(c *OAuth2Config) { c.Grant = "password" }, "expect 'client_credentials' or 'refresh_token'"},
		{"bad url", nil, func(c *OAuth2Config) { c.TokenURL = "file:///etc/passwd" }, "token_url must be an http or https URL"},
		{"missing secret", nil, func(c *OAuth2Config) { c.RefreshToken = "NOPE" }, `secret NOPE is not set for sandbox "box"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			o, _, _ := newTestOAuth2(t, &logs)
			ts := newTokenServer(t)
			ts.answer = tc.answer
			cfg := OAuth2Config{TokenURL: ts.URL, Grant: GrantRefreshToken, ClientID: "app", ClientSecret: "CLIENT_SECRET", RefreshToken: "REFRESH"}
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			tok, err := o.Token(context.Background(), "box", cfg)
			if err == nil || tok != "" || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Token = %q, %v; want error %q", tok, err, tc.wantErr)
			}
			noLeak(t, "error", err.Error(), refreshCanary, clientCanary)
			noLeak(t, "logs", logs.String(), refreshCanary, clientCanary)
		})
	}
}

func TestOAuth2AsProvider(t *testing.T) {
	o, st, _ := newTestOAuth2(t, nil)
	ts := newTokenServer(t)
	if err := o.Register("CORP_TOKEN", OAuth2Config{TokenURL: ts.URL, Grant: GrantRefreshToken, RefreshToken: "REFRESH"}); err != nil {
		t.Fatal(err)
	}
	if err := o.Register("BAD", OAuth2Config{Grant: GrantRefreshToken}); err == nil {
		t.Fatal("bad config registered")
	}
	chain := NewChain(st, o)
	if tok, err := chain.Lookup(context.Background(), "box", "CORP_TOKEN"); err != nil || tok != "at-1" {
		t.Fatalf("Lookup = %q, %v", tok, err)
	}
	// Unregistered names fall through as not found.
	if _, err := chain.Lookup(context.Background(), "box", "OTHER"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v", err)
	}
	// A sandbox without inputs fails closed (not found is not swallowed
	// into a token of another sandbox).
	_, err := chain.Lookup(context.Background(), "nobox", "CORP_TOKEN")
	if err == nil || !strings.Contains(err.Error(), "REFRESH") {
		t.Fatalf("err = %v", err)
	}
	noLeak(t, "error", err.Error(), refreshCanary)
}
