package secrets

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/sync/singleflight"

	"github.com/sluice-dev/sluice/pkg/policy"
)

// ErrCallbackFailed is matched (errors.Is) by every credential callback
// error; the proxy answers such a request with 502.
var ErrCallbackFailed = errors.New("credential callback failed")

// Callback failure categories (CallbackError.Reason).
const (
	ReasonTimeout         = "timeout"
	ReasonConnection      = "connection error"
	ReasonStatus          = "non-2xx status"
	ReasonMalformed       = "malformed response"
	ReasonTooLarge        = "response too large"
	ReasonInvalidHeader   = "invalid header in response"
	ReasonForbiddenHeader = "forbidden header in response"
	ReasonCanceled        = "canceled"
	ReasonConfig          = "invalid callback configuration"
	ReasonNoKey           = "no signing key configured"
)

// CallbackError describes a failed credential callback. Its text is
// "credential callback failed: <reason> (...)"; it never carries response
// body content, header names or values from the response, or the callback
// URL's path, query or user info.
type CallbackError struct {
	Reason string
	Status int    // the HTTP status for ReasonStatus
	Target string // scheme://host[:port] of the callback URL
}

func (e *CallbackError) Error() string {
	msg := "credential callback failed: " + e.Reason
	if e.Reason == ReasonStatus && e.Status != 0 {
		msg += " " + strconv.Itoa(e.Status)
	}
	if e.Target != "" {
		msg += " (callback " + e.Target + ")"
	}
	return msg
}

// Is makes errors.Is(err, ErrCallbackFailed) true.
func (e *CallbackError) Is(target error) bool { return target == ErrCallbackFailed }

// Callback protocol limits and defaults.
const (
	DefaultCallbackTimeout = 5 * time.Second
	maxCallbackResponse    = 1 << 20
	maxCallbackCache       = 4096
)

// forbiddenCallbackHeaders would change the framing or routing of the
// request if a callback could set them.
var forbiddenCallbackHeaders = map[string]bool{
	"Host": true, "Content-Length": true, "Transfer-Encoding": true, "Connection": true,
	"Keep-Alive": true, "Te": true, "Trailer": true, "Upgrade": true,
	"Proxy-Connection": true, "Proxy-Authorization": true, "Proxy-Authenticate": true,
}

// Callbacks fetches headers from credential callback services (a rule's
// `callback: {url, ttl, timeout}`), signs each request with an Ed25519 key,
// caches answers per (callback URL, sandbox, host, port) and makes one call
// for concurrent misses. Safe for concurrent use.
type Callbacks struct {
	signer ed25519.PrivateKey
	client *http.Client
	log    *slog.Logger
	now    func() time.Time

	sf    singleflight.Group
	mu    sync.Mutex // guards cache and labels
	cache map[callbackKey]callbackEntry
	// labels are the sandboxes' labels, sent in every request body.
	labels map[string]map[string]string
}

type callbackKey struct {
	url, sandbox, host string
	port               uint16
}

func (k callbackKey) String() string {
	return k.url + "\x00" + k.sandbox + "\x00" + k.host + "\x00" + strconv.Itoa(int(k.port))
}

type callbackEntry struct {
	headers map[string]string
	expires time.Time
}

// NewCallbacks returns a callback client. signer must be an Ed25519 private
// key (LoadOrCreateSigningKey); with a nil or malformed key every call fails
// closed with ReasonNoKey (nothing is ever sent unsigned). client may be nil (a client that ignores
// proxy environment variables). Redirects are never followed: a 3xx answer
// is a failure. log must not be nil.
func NewCallbacks(signer ed25519.PrivateKey, client *http.Client, log *slog.Logger) *Callbacks {
	var cl http.Client
	if client != nil {
		cl = *client
	} else {
		cl.Transport = &http.Transport{Proxy: nil, DialContext: (&net.Dialer{Timeout: 10 * time.Second}).DialContext, MaxIdleConnsPerHost: 4, IdleConnTimeout: 90 * time.Second}
	}
	cl.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	if len(signer) != ed25519.PrivateKeySize {
		signer = nil
	}
	return &Callbacks{signer: signer, client: &cl, log: log, now: time.Now, cache: map[callbackKey]callbackEntry{}, labels: map[string]map[string]string{}}
}

// SetLabels records the labels of sandbox (`--label k=v`, pod labels,
// container annotations), sent as "labels" in each of its callback
// requests. Changed labels drop the sandbox's cached answers; nil or empty
// labels send {}.
func (c *Callbacks) SetLabels(sandbox string, labels map[string]string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if maps.Equal(c.labels[sandbox], labels) {
		return
	}
	for k := range c.cache {
		if k.sandbox == sandbox {
			delete(c.cache, k)
		}
	}
	if len(labels) == 0 {
		delete(c.labels, sandbox)
		return
	}
	c.labels[sandbox] = maps.Clone(labels)
}

// PublicKey returns the key callback servers verify signatures with (nil
// without a signing key).
func (c *Callbacks) PublicKey() ed25519.PublicKey {
	if c.signer == nil {
		return nil
	}
	return c.signer.Public().(ed25519.PublicKey)
}

// callbackRequest is the JSON body POSTed to the callback URL.
type callbackRequest struct {
	Sandbox string            `json:"sandbox"`
	Host    string            `json:"host"`
	Port    uint16            `json:"port"`
	Labels  map[string]string `json:"labels"`
}

type callbackResponse struct {
	Headers    map[string]string `json:"headers"`
	TTLSeconds *float64          `json:"ttl_seconds"`
}

// CallbackHeaders returns the headers to inject into a request of sandbox to
// host:port, from the cache or by calling cb.URL. Any failure returns a
// *CallbackError (errors.Is ErrCallbackFailed): the request must fail closed.
// The returned map is the caller's; header names are canonical.
func (c *Callbacks) CallbackHeaders(ctx context.Context, sandbox, host string, port uint16, cb *policy.Callback) (map[string]string, error) {
	if cb == nil {
		return nil, &CallbackError{Reason: ReasonConfig}
	}
	u, err := url.Parse(cb.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, &CallbackError{Reason: ReasonConfig}
	}
	target := u.Scheme + "://" + u.Host
	if c.signer == nil {
		return nil, &CallbackError{Reason: ReasonNoKey, Target: target}
	}
	key := callbackKey{url: cb.URL, sandbox: sandbox, host: host, port: port}
	if h, ok := c.cached(key); ok {
		return h, nil
	}
	ch := c.sf.DoChan(key.String(), func() (any, error) {
		if h, ok := c.cached(key); ok {
			return h, nil
		}
		return c.fetch(context.WithoutCancel(ctx), key, target, cb)
	})
	select {
	case <-ctx.Done():
		return nil, &CallbackError{Reason: ReasonCanceled, Target: target}
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return copyHeaders(r.Val.(map[string]string)), nil
	}
}

// Forget drops every cached answer and the labels of sandbox (on detach).
func (c *Callbacks) Forget(sandbox string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.labels, sandbox)
	for k := range c.cache {
		if k.sandbox == sandbox {
			delete(c.cache, k)
		}
	}
}

func (c *Callbacks) cached(k callbackKey) (map[string]string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.cache[k]
	if !ok {
		return nil, false
	}
	if !c.now().Before(e.expires) {
		delete(c.cache, k)
		return nil, false
	}
	return copyHeaders(e.headers), true
}

func (c *Callbacks) store(k callbackKey, h map[string]string, ttl time.Duration) {
	if ttl <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if len(c.cache) >= maxCallbackCache {
		for ok, e := range c.cache {
			if !now.Before(e.expires) {
				delete(c.cache, ok)
			}
		}
		if len(c.cache) >= maxCallbackCache {
			clear(c.cache)
		}
	}
	c.cache[k] = callbackEntry{headers: copyHeaders(h), expires: now.Add(ttl)}
}

func copyHeaders(h map[string]string) map[string]string {
	out := make(map[string]string, len(h))
	for k, v := range h {
		out[k] = v
	}
	return out
}

func (c *Callbacks) fetch(ctx context.Context, key callbackKey, target string, cb *policy.Callback) (map[string]string, error) {
	fail := func(reason string) error { return &CallbackError{Reason: reason, Target: target} }
	timeout := cb.Timeout
	if timeout <= 0 {
		timeout = DefaultCallbackTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	c.mu.Lock()
	labels := c.labels[key.sandbox]
	c.mu.Unlock()
	if labels == nil {
		labels = map[string]string{}
	}
	body, err := json.Marshal(callbackRequest{Sandbox: key.sandbox, Host: key.host, Port: key.port, Labels: labels})
	if err != nil {
		return nil, fail(ReasonConfig)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, cb.URL, bytes.NewReader(body))
	if err != nil {
		return nil, fail(ReasonConfig)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "sluice-credential-callback/1")
	req.Header.Set(SignatureHeader, Sign(c.signer, body, c.now()))

	start := time.Now()
	resp, err := c.client.Do(req)
	if err != nil {
		// The transport error is not wrapped: it can quote the callback URL
		// or bytes of a malformed response.
		var ne net.Error
		if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
			return nil, fail(ReasonTimeout)
		}
		return nil, fail(ReasonConnection)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		io.Copy(io.Discard, io.LimitReader(resp.Body, maxCallbackResponse))
		return nil, &CallbackError{Reason: ReasonStatus, Status: resp.StatusCode, Target: target}
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxCallbackResponse+1))
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fail(ReasonTimeout)
		}
		return nil, fail(ReasonConnection)
	}
	if len(raw) > maxCallbackResponse {
		return nil, fail(ReasonTooLarge)
	}
	var cr callbackResponse
	if err := json.Unmarshal(raw, &cr); err != nil || cr.Headers == nil {
		return nil, fail(ReasonMalformed)
	}
	ttl := cb.TTL
	if cr.TTLSeconds != nil {
		s := *cr.TTLSeconds
		if s < 0 || math.IsNaN(s) || math.IsInf(s, 0) {
			return nil, fail(ReasonMalformed)
		}
		if d := time.Duration(s * float64(time.Second)); s < float64(math.MaxInt64/int64(time.Second)) && d < ttl {
			ttl = d
		}
	}
	out := make(map[string]string, len(cr.Headers))
	for name, value := range cr.Headers {
		if !httpguts.ValidHeaderFieldName(name) || !httpguts.ValidHeaderFieldValue(value) {
			return nil, fail(ReasonInvalidHeader)
		}
		cn := http.CanonicalHeaderKey(name)
		if forbiddenCallbackHeaders[cn] {
			return nil, fail(ReasonForbiddenHeader)
		}
		if _, dup := out[cn]; dup {
			return nil, fail(ReasonInvalidHeader)
		}
		out[cn] = value
	}
	c.store(key, out, ttl)
	c.log.Debug("credential callback answered", "sandbox", key.sandbox, "host", key.host, "port", key.port,
		"callback", target, "headers", len(out), "ttl", ttl, "duration", time.Since(start))
	return out, nil
}

// String describes the callback client without secrets.
func (c *Callbacks) String() string {
	if c.signer == nil {
		return "credential callbacks (no signing key)"
	}
	return fmt.Sprintf("credential callbacks (key %s)", KeyID(c.PublicKey()))
}
