package secrets

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/sluice-dev/sluice/pkg/policy"
)

type fuzzRT struct {
	status int
	body   []byte
}

func (r fuzzRT) RoundTrip(req *http.Request) (*http.Response, error) {
	req.Body.Close()
	return &http.Response{StatusCode: r.status, Header: http.Header{}, Body: io.NopCloser(bytes.NewReader(r.body)), Request: req}, nil
}

// FuzzCallbackResponse: whatever a callback service answers, CallbackHeaders
// either fails with ErrCallbackFailed (the request fails closed) or returns
// only valid, non-framing header fields from a 2xx answer; an error never
// quotes the answer.
func FuzzCallbackResponse(f *testing.F) {
	for _, s := range []struct {
		status int
		body   string
	}{
		{200, `{"headers":{"Authorization":"Bearer t"}}`},
		{200, `{"headers":{"X-A":"1"},"ttl_seconds":30}`},
		{200, `{"headers":{"Host":"evil.test"}}`},
		{200, `{"headers":{"X-A":"a\r\nX-B: b"}}`},
		{200, `{"headers":{"x-a":"1","X-A":"2"}}`},
		{200, `{"headers":null}`},
		{200, `{"headers":{"X-A":"1"},"ttl_seconds":-1}`},
		{200, `{"headers":{"X-A":"1"},"ttl_seconds":1e309}`},
		{200, `{"headers": {"X-A": `},
		{500, `{"headers":{"X-A":"1"}}`},
		{302, ``},
		{204, ``},
	} {
		f.Add(s.status, []byte(s.body))
	}
	key := ed25519.NewKeyFromSeed(make([]byte, 32))
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cb := &policy.Callback{URL: "http://127.0.0.1:9/credentials", TTL: time.Minute, Timeout: time.Second}
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		if status < 100 || status > 999 {
			return
		}
		c := NewCallbacks(key, &http.Client{Transport: fuzzRT{status: status, body: body}}, log)
		h, err := c.CallbackHeaders(context.Background(), "sb", "api.test", 443, cb)
		if err != nil {
			if h != nil {
				t.Fatalf("headers %v with error %v", h, err)
			}
			var ce *CallbackError
			if !errorsAs(err, &ce) {
				t.Fatalf("error %T %v is not a *CallbackError", err, err)
			}
			msg := err.Error()
			if len(body) >= 8 && strings.Contains(msg, string(body)) {
				t.Fatalf("error quotes the response: %v", err)
			}
			return
		}
		if status < 200 || status > 299 {
			t.Fatalf("status %d accepted", status)
		}
		for k, v := range h {
			if !httpguts.ValidHeaderFieldName(k) || !httpguts.ValidHeaderFieldValue(v) {
				t.Fatalf("invalid header %q: %q accepted", k, v)
			}
			if k != http.CanonicalHeaderKey(k) || forbiddenCallbackHeaders[k] {
				t.Fatalf("header %q accepted", k)
			}
		}
	})
}

func errorsAs(err error, target **CallbackError) bool {
	ce, ok := err.(*CallbackError)
	if ok {
		*target = ce
	}
	return ok
}
