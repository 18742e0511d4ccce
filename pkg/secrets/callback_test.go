package secrets

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/policy"
)

// fakeClock is an injectable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// callbackServer is a credential service on loopback that verifies every
// request's signature with the published (PEM) key.
type callbackServer struct {
	*httptest.Server
	t      *testing.T
	pub    ed25519.PublicKey
	calls  atomic.Int64
	badSig atomic.Int64
	// answer writes the response; nil gives a default success. Set it
	// with setAnswer once the server may be serving.
	answer func(w http.ResponseWriter, r *http.Request, req callbackRequest)
	mu     sync.Mutex
	gate   chan struct{} // when set, handlers wait on it
	clock  *fakeClock    // the verifier's clock (sluice's fake clock)
}

func newCallbackServer(t *testing.T, priv ed25519.PrivateKey) *callbackServer {
	t.Helper()
	pemb, err := PublicKeyPEM(priv.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ParsePublicKeyPEM(pemb)
	if err != nil {
		t.Fatal(err)
	}
	cs := &callbackServer{t: t, pub: pub}
	cs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cs.calls.Add(1)
		body, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
			cs.badSig.Add(1)
			http.Error(w, "bad request", 400)
			return
		}
		now := time.Now()
		if cs.clock != nil {
			now = cs.clock.Now()
		}
		if err := VerifyAt(cs.pub, r.Header.Get(SignatureHeader), body, time.Minute, now); err != nil {
			cs.badSig.Add(1)
			http.Error(w, err.Error(), 401)
			return
		}
		var req callbackRequest
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			cs.badSig.Add(1)
			http.Error(w, "bad body", 400)
			return
		}
		if cs.gate != nil {
			<-cs.gate
		}
		cs.mu.Lock()
		answer := cs.answer
		cs.mu.Unlock()
		if answer != nil {
			answer(w, r, req)
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"headers": map[string]string{
			"authorization": "Bearer " + canary + "-" + req.Sandbox + "-" + req.Host,
		}})
	}))
	t.Cleanup(cs.Close)
	return cs
}

func (cs *callbackServer) setAnswer(f func(http.ResponseWriter, *http.Request, callbackRequest)) {
	cs.mu.Lock()
	cs.answer = f
	cs.mu.Unlock()
}

func newTestCallbacks(t *testing.T, logs *bytes.Buffer) (*Callbacks, ed25519.PrivateKey, *fakeClock) {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	c := NewCallbacks(priv, nil, testLogger(t, logs))
	clk := newFakeClock()
	c.now = clk.Now
	return c, priv, clk
}

func TestCallbackSuccessCacheRefresh(t *testing.T) {
	var logs bytes.Buffer
	c, priv, clk := newTestCallbacks(t, &logs)
	srv := newCallbackServer(t, priv)
	srv.clock = clk
	cb := &policy.Callback{URL: srv.URL + "/credentials?token=urlsecret", TTL: 5 * time.Minute, Timeout: 2 * time.Second}
	ctx := context.Background()

	h, err := c.CallbackHeaders(ctx, "box", "api.corp.internal", 443, cb)
	if err != nil {
		t.Fatal(err)
	}
	if want := "Bearer " + canary + "-box-api.corp.internal"; h["Authorization"] != want || len(h) != 1 {
		t.Fatalf("headers = %v", h)
	}
	if srv.badSig.Load() != 0 {
		t.Fatal("server could not verify the signature with the published key")
	}
	h["Authorization"] = "mutated" // the caller's copy
	for i := 0; i < 5; i++ {
		clk.Add(time.Minute - time.Second) // 4m55s after the first call at most
		h2, err := c.CallbackHeaders(ctx, "box", "api.corp.internal", 443, cb)
		if err != nil || h2["Authorization"] == "mutated" {
			t.Fatalf("cached call %d: %v %v", i, h2, err)
		}
	}
	if n := srv.calls.Load(); n != 1 {
		t.Fatalf("calls within TTL = %d, want 1", n)
	}
	// Different sandbox, host or port: separate entries.
	c.CallbackHeaders(ctx, "other", "api.corp.internal", 443, cb)
	c.CallbackHeaders(ctx, "box", "api.corp.internal", 8443, cb)
	if n := srv.calls.Load(); n != 3 {
		t.Fatalf("calls = %d, want 3", n)
	}
	clk.Add(10 * time.Second) // past the TTL
	if _, err := c.CallbackHeaders(ctx, "box", "api.corp.internal", 443, cb); err != nil {
		t.Fatal(err)
	}
	if n := srv.calls.Load(); n != 4 {
		t.Fatalf("calls after TTL = %d, want 4 (refresh)", n)
	}
	c.Forget("box")
	c.CallbackHeaders(ctx, "box", "api.corp.internal", 443, cb)
	if n := srv.calls.Load(); n != 5 {
		t.Fatalf("calls after Forget = %d, want 5", n)
	}
	noLeak(t, "logs", logs.String(), canary, "urlsecret")
	if !strings.Contains(logs.String(), "credential callback answered") {
		t.Fatalf("no debug log: %s", logs.String())
	}
}

func TestCallbackTTLSecondsSmaller(t *testing.T) {
	c, priv, clk := newTestCallbacks(t, nil)
	srv := newCallbackServer(t, priv)
	srv.clock = clk
	srv.answer = func(w http.ResponseWriter, _ *http.Request, _ callbackRequest) {
		io.WriteString(w, `{"headers":{"X-Token":"t"},"ttl_seconds":30,"extra":"ignored"}`)
	}
	cb := &policy.Callback{URL: srv.URL, TTL: time.Hour, Timeout: time.Second}
	ctx := context.Background()
	c.CallbackHeaders(ctx, "box", "h", 443, cb)
	clk.Add(29 * time.Second)
	c.CallbackHeaders(ctx, "box", "h", 443, cb)
	if n := srv.calls.Load(); n != 1 {
		t.Fatalf("calls = %d, want 1", n)
	}
	clk.Add(2 * time.Second)
	c.CallbackHeaders(ctx, "box", "h", 443, cb)
	if n := srv.calls.Load(); n != 2 {
		t.Fatalf("calls after ttl_seconds = %d, want 2", n)
	}
	// ttl_seconds larger than the rule's ttl: the rule's ttl wins.
	srv.setAnswer(func(w http.ResponseWriter, _ *http.Request, _ callbackRequest) {
		io.WriteString(w, `{"headers":{"X-Token":"t"},"ttl_seconds":86400}`)
	})
	c.CallbackHeaders(ctx, "box", "h2", 443, cb)
	clk.Add(time.Hour + time.Second)
	c.CallbackHeaders(ctx, "box", "h2", 443, cb)
	if n := srv.calls.Load(); n != 4 {
		t.Fatalf("calls = %d, want 4", n)
	}
}

func TestCallbackSingleflight(t *testing.T) {
	c, priv, _ := newTestCallbacks(t, nil)
	srv := newCallbackServer(t, priv)
	srv.gate = make(chan struct{})
	cb := &policy.Callback{URL: srv.URL, TTL: time.Minute, Timeout: 5 * time.Second}
	const n = 100
	var wg sync.WaitGroup
	var bad atomic.Int64
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			h, err := c.CallbackHeaders(context.Background(), "box", "api", 443, cb)
			if err != nil || !strings.HasPrefix(h["Authorization"], "Bearer ") {
				bad.Add(1)
			}
		}()
	}
	close(start)
	// Wait until the one upstream call is in flight, give the others time
	// to pile up behind it, then release it.
	deadline := time.Now().Add(5 * time.Second)
	for srv.calls.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	close(srv.gate)
	wg.Wait()
	if bad.Load() != 0 {
		t.Fatalf("%d callers failed", bad.Load())
	}
	if got := srv.calls.Load(); got != 1 {
		t.Fatalf("upstream calls = %d, want 1", got)
	}
}

func TestCallbackCallerCancelDoesNotFailOthers(t *testing.T) {
	c, priv, _ := newTestCallbacks(t, nil)
	srv := newCallbackServer(t, priv)
	srv.gate = make(chan struct{})
	cb := &policy.Callback{URL: srv.URL, TTL: time.Minute, Timeout: 5 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 2)
	go func() { _, err := c.CallbackHeaders(ctx, "box", "api", 443, cb); errc <- err }()
	for srv.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	go func() { _, err := c.CallbackHeaders(context.Background(), "box", "api", 443, cb); errc <- err }()
	time.Sleep(20 * time.Millisecond)
	cancel()
	if err := <-errc; err == nil || !strings.Contains(err.Error(), "credential callback failed: canceled") {
		t.Fatalf("canceled caller: %v", err)
	}
	close(srv.gate)
	if err := <-errc; err != nil {
		t.Fatalf("other caller: %v", err)
	}
}

func TestCallbackFailures(t *testing.T) {
	leak := canary + "-in-response"
	write := func(status int, body string) func(http.ResponseWriter, *http.Request, callbackRequest) {
		return func(w http.ResponseWriter, _ *http.Request, _ callbackRequest) {
			w.WriteHeader(status)
			io.WriteString(w, body)
		}
	}
	tests := []struct {
		name    string
		answer  func(http.ResponseWriter, *http.Request, callbackRequest)
		url     string // overrides the server URL
		timeout time.Duration
		wantErr string
	}{
		{"timeout", func(w http.ResponseWriter, r *http.Request, _ callbackRequest) {
			select {
			case <-r.Context().Done():
			case <-time.After(3 * time.Second):
			}
		}, "", 150 * time.Millisecond, "credential callback failed: timeout"},
		{"connection refused", nil, "closed", 0, "credential callback failed: connection error"},
		{"garbage instead of HTTP", func(w http.ResponseWriter, _ *http.Request, _ callbackRequest) {
			conn, _, _ := w.(http.Hijacker).Hijack()
			io.WriteString(conn, "garbage "+leak+"\r\n\r\n")
			conn.Close()
		}, "", 0, "credential callback failed: connection error"},
		{"500", write(500, `{"headers":{"A":"`+leak+`"}}`), "", 0, "credential callback failed: non-2xx status 500"},
		{"403", write(403, leak), "", 0, "non-2xx status 403"},
		{"redirect not followed", func(w http.ResponseWriter, r *http.Request, _ callbackRequest) {
			http.Redirect(w, r, "/elsewhere?"+leak, http.StatusFound)
		}, "", 0, "non-2xx status 302"},
		{"malformed json", write(200, "not json "+leak), "", 0, "credential callback failed: malformed response"},
		{"trailing garbage", write(200, `{"headers":{}} `+leak), "", 0, "malformed response"},
		{"no headers object", write(200, `{"token":"`+leak+`"}`), "", 0, "malformed response"},
		{"header value not a string", write(200, `{"headers":{"A":1}}`), "", 0, "malformed response"},
		{"negative ttl", write(200, `{"headers":{"A":"`+leak+`"},"ttl_seconds":-1}`), "", 0, "malformed response"},
		{"invalid header name", write(200, `{"headers":{"Bad Name":"`+leak+`"}}`), "", 0, "credential callback failed: invalid header in response"},
		{"invalid header name chars", write(200, `{"headers":{"`+leak+`:x":"v"}}`), "", 0, "invalid header in response"},
		{"header value with CRLF", write(200, `{"headers":{"X-Key":"a\r\nInjected: `+leak+`"}}`), "", 0, "invalid header in response"},
		{"header value with NUL", write(200, `{"headers":{"X-Key":"a\u0000`+leak+`"}}`), "", 0, "invalid header in response"},
		{"duplicate header", write(200, `{"headers":{"x-key":"a","X-Key":"`+leak+`"}}`), "", 0, "invalid header in response"},
		{"forbidden header", write(200, `{"headers":{"host":"`+leak+`"}}`), "", 0, "forbidden header in response"},
		{"too large", write(200, `{"headers":{"A":"`+strings.Repeat("x", maxCallbackResponse)+leak+`"}}`), "", 0, "response too large"},
		{"bad url", nil, "ftp://x/", 0, "invalid callback configuration"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			c, priv, _ := newTestCallbacks(t, &logs)
			srv := newCallbackServer(t, priv)
			srv.answer = tc.answer
			u := srv.URL + "/cb?key=" + canary + "-url"
			switch tc.url {
			case "closed":
				dead := httptest.NewServer(http.NotFoundHandler())
				u = dead.URL + "/cb"
				dead.Close()
			case "":
			default:
				u = tc.url
			}
			cb := &policy.Callback{URL: u, TTL: time.Minute, Timeout: tc.timeout}
			for i := 0; i < 2; i++ { // failures are not cached
				h, err := c.CallbackHeaders(context.Background(), "box", "api", 443, cb)
				if err == nil || h != nil {
					t.Fatalf("got %v, nil error", h)
				}
				if !errors.Is(err, ErrCallbackFailed) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %q, want %q", err, tc.wantErr)
				}
				noLeak(t, "error", err.Error(), canary)
			}
			if tc.url == "" && srv.calls.Load() != 2 {
				t.Errorf("calls = %d, want 2 (no caching of failures)", srv.calls.Load())
			}
			if srv.badSig.Load() != 0 {
				t.Error("signature did not verify")
			}
			noLeak(t, "logs", logs.String(), canary)
		})
	}
	if (&CallbackError{Reason: ReasonConfig}).Error() != "credential callback failed: invalid callback configuration" {
		t.Fatal("error text")
	}
	_, err := (&Callbacks{}).CallbackHeaders(context.Background(), "b", "h", 1, nil)
	if !errors.Is(err, ErrCallbackFailed) {
		t.Fatal("nil callback")
	}
	// Without a signing key nothing is sent: fail closed.
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	srv := newCallbackServer(t, priv)
	for _, key := range []ed25519.PrivateKey{nil, priv[:10]} {
		c := NewCallbacks(key, nil, testLogger(t, nil))
		_, err = c.CallbackHeaders(context.Background(), "b", "h", 1, &policy.Callback{URL: srv.URL, TTL: time.Minute})
		if !errors.Is(err, ErrCallbackFailed) || !strings.Contains(err.Error(), "no signing key configured") || c.PublicKey() != nil {
			t.Fatalf("no key: %v", err)
		}
		_ = c.String()
	}
	if srv.calls.Load() != 0 {
		t.Fatal("unsigned request sent")
	}
}

func TestCallbackZeroTTLNotCached(t *testing.T) {
	c, priv, _ := newTestCallbacks(t, nil)
	srv := newCallbackServer(t, priv)
	srv.answer = func(w http.ResponseWriter, _ *http.Request, _ callbackRequest) {
		io.WriteString(w, `{"headers":{"X-Token":"t"},"ttl_seconds":0}`)
	}
	cb := &policy.Callback{URL: srv.URL, TTL: time.Minute, Timeout: time.Second}
	c.CallbackHeaders(context.Background(), "box", "h", 443, cb)
	c.CallbackHeaders(context.Background(), "box", "h", 443, cb)
	if n := srv.calls.Load(); n != 2 {
		t.Fatalf("calls = %d, want 2", n)
	}
}

// TestCallbackInjectionContract plays the proxy's part with a minimal
// injector: headers from the callback reach the upstream; on any callback
// failure the client gets 502 "credential callback failed" and the upstream
// sees no request.
func TestCallbackInjectionContract(t *testing.T) {
	var upstreamCalls atomic.Int64
	var gotAuth atomic.Value
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstreamCalls.Add(1)
		gotAuth.Store(r.Header.Get("Authorization"))
		io.WriteString(w, "upstream ok")
	}))
	t.Cleanup(upstream.Close)

	c, priv, _ := newTestCallbacks(t, nil)
	srv := newCallbackServer(t, priv)
	cb := &policy.Callback{URL: srv.URL, TTL: time.Minute, Timeout: 200 * time.Millisecond}
	injector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, err := c.CallbackHeaders(r.Context(), "box", "api.corp.internal", 443, cb)
		if err != nil {
			http.Error(w, "sluice: "+err.Error(), http.StatusBadGateway)
			return
		}
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, upstream.URL+r.URL.Path, nil)
		for k, v := range h {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			http.Error(w, "upstream", http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		io.Copy(w, resp.Body)
	}))
	t.Cleanup(injector.Close)
	get := func() (int, string) {
		resp, err := http.Get(injector.URL + "/v1/x")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	if code, body := get(); code != 200 || body != "upstream ok" {
		t.Fatalf("success: %d %q", code, body)
	}
	if a, _ := gotAuth.Load().(string); a != "Bearer "+canary+"-box-api.corp.internal" {
		t.Fatalf("upstream saw Authorization %q", a)
	}
	failures := map[string]func(http.ResponseWriter, *http.Request, callbackRequest){
		"timeout": func(w http.ResponseWriter, r *http.Request, _ callbackRequest) { <-r.Context().Done() },
		"500":     func(w http.ResponseWriter, _ *http.Request, _ callbackRequest) { w.WriteHeader(500) },
		"malformed": func(w http.ResponseWriter, _ *http.Request, _ callbackRequest) {
			io.WriteString(w, "{"+canary)
		},
		"bad header": func(w http.ResponseWriter, _ *http.Request, _ callbackRequest) {
			io.WriteString(w, `{"headers":{"X":"a\nb`+canary+`"}}`)
		},
	}
	for name, answer := range failures {
		c.Forget("box")
		srv.setAnswer(answer)
		before := upstreamCalls.Load()
		code, body := get()
		if code != http.StatusBadGateway || !strings.Contains(body, "credential callback failed") {
			t.Errorf("%s: %d %q", name, code, body)
		}
		noLeak(t, name+" 502 body", body, canary)
		if upstreamCalls.Load() != before {
			t.Errorf("%s: the upstream got a request", name)
		}
	}
	// Connection error: the callback service is gone.
	c.Forget("box")
	srv.Close()
	before := upstreamCalls.Load()
	if code, body := get(); code != http.StatusBadGateway || !strings.Contains(body, "connection error") || upstreamCalls.Load() != before {
		t.Errorf("connection error: %d %q", code, body)
	}
}

// TestCallbackLabels: the sandbox's labels travel in the signed body (the
// server verified the signature over it); changing them drops the cache.
func TestCallbackLabels(t *testing.T) {
	c, priv, clk := newTestCallbacks(t, nil)
	srv := newCallbackServer(t, priv)
	srv.clock = clk
	var mu sync.Mutex
	var got []map[string]string
	srv.setAnswer(func(w http.ResponseWriter, _ *http.Request, req callbackRequest) {
		mu.Lock()
		got = append(got, req.Labels)
		mu.Unlock()
		json.NewEncoder(w).Encode(map[string]any{"headers": map[string]string{"Authorization": "Bearer for-" + req.Labels["user"]}})
	})
	cb := &policy.Callback{URL: srv.URL, TTL: time.Minute, Timeout: 2 * time.Second}
	ctx := context.Background()
	h, err := c.CallbackHeaders(ctx, "box", "api", 443, cb)
	if err != nil || h["Authorization"] != "Bearer for-" {
		t.Fatalf("no labels: %v %v", h, err)
	}
	c.SetLabels("box", map[string]string{"user": "alice", "team": "ml"})
	h, err = c.CallbackHeaders(ctx, "box", "api", 443, cb)
	if err != nil || h["Authorization"] != "Bearer for-alice" {
		t.Fatalf("labels: %v %v", h, err)
	}
	c.SetLabels("box", map[string]string{"user": "alice", "team": "ml"}) // unchanged: cached
	c.CallbackHeaders(ctx, "box", "api", 443, cb)
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 || got[0] == nil || len(got[0]) != 0 || got[1]["user"] != "alice" || got[1]["team"] != "ml" || srv.badSig.Load() != 0 {
		t.Fatalf("bodies' labels %v, bad signatures %d", got, srv.badSig.Load())
	}
}
