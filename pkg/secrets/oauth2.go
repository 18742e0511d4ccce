package secrets

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/sync/singleflight"

	"github.com/sluice-dev/sluice/pkg/policy"
)

// Lookuper resolves a named secret for a sandbox (sandbox scope, then
// global). *Chain implements it.
type Lookuper interface {
	Lookup(ctx context.Context, sandbox, name string) (string, error)
}

var _ Lookuper = (*Chain)(nil)

// Persister keeps a rotated refresh token where the next Lookup (and the
// next daemon) finds it. *Store implements it.
type Persister interface {
	Get(scope Scope, name string) (string, error)
	Set(scope Scope, name, value string) error
}

var _ Persister = (*Store)(nil)

// grantTypeJWTBearer is the grant_type of RFC 7523 section 2.1.
const grantTypeJWTBearer = "urn:ietf:params:oauth:grant-type:jwt-bearer"

// DefaultTokenLifetime applies when a token response has no expires_in.
const DefaultTokenLifetime = 5 * time.Minute

// maxRefreshMargin bounds the skew: a token is refreshed a tenth of its
// lifetime, at most a minute, before it expires.
const maxRefreshMargin = time.Minute

// DefaultTokenTimeout bounds one token request.
const DefaultTokenTimeout = 5 * time.Second

// ErrTokenFailed is matched (errors.Is) by every token minting failure.
var ErrTokenFailed = errors.New("oauth2 token request failed")

// TokenError describes a failed token request. Its text never contains
// secret inputs, tokens or response body content, except a standard OAuth2
// error code (RFC 6749 5.2, e.g. invalid_grant) when the answer has one.
type TokenError struct {
	Reason string // a Reason* category
	Status int
	Code   string // OAuth2 "error" code, only if it is a plain token
	Target string // scheme://host[:port] of the token URL
}

func (e *TokenError) Error() string {
	msg := "oauth2 token request failed: " + e.Reason
	if e.Status != 0 {
		msg += " " + strconv.Itoa(e.Status)
	}
	if e.Code != "" {
		msg += " (" + e.Code + ")"
	}
	if e.Target != "" {
		msg += " (token endpoint " + e.Target + ")"
	}
	return msg
}

// Is makes errors.Is(err, ErrTokenFailed) true.
func (e *TokenError) Is(target error) bool { return target == ErrTokenFailed }

// OAuth2 mints access tokens outside the sandbox for the `oauth2:` blocks of
// policy rules and caches each per (sandbox, rule) until shortly before it
// expires; concurrent misses make one request (singleflight). Secret inputs
// (client secret, refresh token, private key) are resolved through the
// Lookuper for the sandbox; a changed client secret or key gets a new
// token. A token endpoint that returns a new refresh token has it written
// back through the Persister, in the scope the old one was found in
// (sandbox, else global), so that a restarted daemon uses it; without a
// Persister, or when the write fails, it is kept in memory. Safe for
// concurrent use.
type OAuth2 struct {
	secrets Lookuper
	persist Persister
	client  *http.Client
	log     *slog.Logger
	now     func() time.Time
	timeout time.Duration // one token request

	sf singleflight.Group
	mu sync.Mutex // guards cache
	// cache is keyed by tokenKey (sandbox, rule, config and secret inputs).
	cache map[string]*tokenEntry
}

type tokenEntry struct {
	sandbox string
	access  string
	expires time.Time // refresh at or after this time
	// refresh is a rotated refresh token not (yet) visible through the
	// Lookuper, which still returns rotatedFrom.
	refresh, rotatedFrom string
}

// NewOAuth2 returns a token minter. secrets resolves the inputs; persist
// (may be nil) receives rotated refresh tokens. client may be nil (a
// client that ignores proxy variables and trusts the system roots); pass
// one whose transport trusts the configured upstream CAs. Redirects are
// never followed. log must not be nil.
func NewOAuth2(secrets Lookuper, persist Persister, client *http.Client, log *slog.Logger) *OAuth2 {
	var cl http.Client
	if client != nil {
		cl = *client
	} else {
		cl.Transport = &http.Transport{Proxy: nil, DialContext: (&net.Dialer{Timeout: 10 * time.Second}).DialContext, MaxIdleConnsPerHost: 4, IdleConnTimeout: 90 * time.Second}
	}
	cl.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &OAuth2{secrets: secrets, persist: persist, client: &cl, log: log, now: time.Now, timeout: DefaultTokenTimeout, cache: map[string]*tokenEntry{}}
}

// Forget drops every cached token of sandbox (on detach).
func (o *OAuth2) Forget(sandbox string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for k, e := range o.cache {
		if e.sandbox == sandbox {
			delete(o.cache, k)
		}
	}
}

// Token returns a valid access token for the oauth2 block cfg of rule in
// sandbox, from the cache or from the token endpoint. Any failure is an
// error (fail closed); a *TokenError for the endpoint's failures.
func (o *OAuth2) Token(ctx context.Context, sandbox, rule string, cfg *policy.OAuth2) (string, error) {
	u, err := url.Parse(cfg.TokenURL)
	if err != nil || u.Host == "" {
		return "", &TokenError{Reason: ReasonConfig}
	}
	target := u.Scheme + "://" + u.Host
	var secret, key string
	if cfg.ClientSecret != "" {
		if secret, err = o.secrets.Lookup(ctx, sandbox, cfg.ClientSecret); err != nil {
			return "", fmt.Errorf("oauth2 client secret: %w", err)
		}
	}
	if cfg.PrivateKey != "" {
		if key, err = o.secrets.Lookup(ctx, sandbox, cfg.PrivateKey); err != nil {
			return "", fmt.Errorf("oauth2 private key: %w", err)
		}
	}
	ck := tokenKey(sandbox, rule, cfg, secret, key)
	if tok, ok := o.cached(ck); ok {
		return tok, nil
	}
	ch := o.sf.DoChan(ck, func() (any, error) {
		if tok, ok := o.cached(ck); ok {
			return tok, nil
		}
		return o.fetch(context.WithoutCancel(ctx), ck, target, sandbox, cfg, secret, key)
	})
	select {
	case <-ctx.Done():
		return "", &TokenError{Reason: ReasonCanceled, Target: target}
	case r := <-ch:
		if r.Err != nil {
			return "", r.Err
		}
		return r.Val.(string), nil
	}
}

// tokenKey identifies a cache entry: the sandbox, the rule, and a digest
// of the config and the secret inputs (so a rotated input gets a fresh
// token). The refresh token is not part of it: rotation keeps the entry.
func tokenKey(sandbox, rule string, c *policy.OAuth2, secret, key string) string {
	h := sha256.New()
	for _, s := range []string{c.TokenURL, c.Grant, c.ClientID, strings.Join(c.Scopes, " "), c.Audience, c.ClientSecret, c.RefreshToken, c.PrivateKey, secret, key} {
		fmt.Fprintf(h, "%d:%s;", len(s), s)
	}
	return sandbox + "\x00" + rule + "\x00" + hex.EncodeToString(h.Sum(nil))
}

func (o *OAuth2) cached(key string) (string, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	e := o.cache[key]
	if e == nil || e.access == "" || !o.now().Before(e.expires) {
		return "", false
	}
	return e.access, true
}

type tokenResponse struct {
	AccessToken  string          `json:"access_token"`
	TokenType    string          `json:"token_type"`
	ExpiresIn    json.RawMessage `json:"expires_in"`
	RefreshToken string          `json:"refresh_token"`
}

// form builds the token request body and says whether the client
// authenticates with HTTP Basic (RFC 6749 2.3.1).
func (o *OAuth2) form(ctx context.Context, sandbox, ck string, cfg *policy.OAuth2, secret, key string) (form url.Values, refresh string, basic bool, err error) {
	form = url.Values{}
	scope := strings.Join(cfg.Scopes, " ")
	switch cfg.Grant {
	case policy.GrantClientCredentials, policy.GrantRefreshToken:
		form.Set("grant_type", cfg.Grant)
		if scope != "" {
			form.Set("scope", scope)
		}
		if cfg.Audience != "" {
			form.Set("audience", cfg.Audience)
		}
		if cfg.Grant == policy.GrantRefreshToken {
			if refresh, err = o.secrets.Lookup(ctx, sandbox, cfg.RefreshToken); err != nil {
				return nil, "", false, fmt.Errorf("oauth2 refresh token: %w", err)
			}
			o.mu.Lock()
			if e := o.cache[ck]; e != nil && e.refresh != "" && e.rotatedFrom == refresh {
				refresh = e.refresh // rotated, and the store does not show it
			}
			o.mu.Unlock()
			form.Set("refresh_token", refresh)
		}
		basic = secret != ""
		if !basic && cfg.ClientID != "" {
			form.Set("client_id", cfg.ClientID)
		}
	case policy.GrantJWTBearer:
		sk, err := parseServiceKey(key)
		if err != nil {
			return nil, "", false, err
		}
		assertion, err := sk.assertion(cfg, o.now())
		if err != nil {
			return nil, "", false, err
		}
		form.Set("grant_type", grantTypeJWTBearer)
		form.Set("assertion", assertion)
		if scope != "" && !sk.google {
			form.Set("scope", scope) // Google reads the scope claim
		}
	default:
		return nil, "", false, fmt.Errorf("oauth2 grant %q: expect one of %s", cfg.Grant, strings.Join(policy.Grants, ", "))
	}
	return form, refresh, basic, nil
}

func (o *OAuth2) fetch(ctx context.Context, ck, target, sandbox string, cfg *policy.OAuth2, secret, key string) (string, error) {
	fail := func(reason string) error { return &TokenError{Reason: reason, Target: target} }
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()

	form, refresh, basic, err := o.form(ctx, sandbox, ck, cfg, secret, key)
	if err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, cfg.TokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return "", fail(ReasonConfig)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "sluice-oauth2/1")
	if basic {
		req.SetBasicAuth(url.QueryEscape(cfg.ClientID), url.QueryEscape(secret))
	}
	start := o.now()
	resp, err := o.client.Do(req)
	if err != nil {
		// The transport error is not wrapped: it can quote the URL or
		// bytes of a malformed answer.
		var ne net.Error
		if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
			return "", fail(ReasonTimeout)
		}
		return "", fail(ReasonConnection)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxCallbackResponse+1))
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return "", fail(ReasonTimeout)
		}
		return "", fail(ReasonConnection)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return "", &TokenError{Reason: ReasonStatus, Status: resp.StatusCode, Code: oauthErrorCode(raw), Target: target}
	}
	if len(raw) > maxCallbackResponse {
		return "", fail(ReasonTooLarge)
	}
	var tr tokenResponse
	if err := json.Unmarshal(raw, &tr); err != nil || tr.AccessToken == "" {
		return "", fail(ReasonMalformed)
	}
	if tr.TokenType != "" && !strings.EqualFold(tr.TokenType, "bearer") {
		return "", fail(ReasonMalformed)
	}
	if !httpguts.ValidHeaderFieldValue(tr.AccessToken) || strings.ContainsAny(tr.AccessToken, " \t") {
		return "", fail(ReasonInvalidHeader)
	}
	lifetime := DefaultTokenLifetime
	if len(tr.ExpiresIn) > 0 && string(tr.ExpiresIn) != "null" {
		// Numbers, and strings holding numbers (some servers), are accepted.
		s := strings.Trim(string(tr.ExpiresIn), `"`)
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 || n > 10*365*24*3600 {
			return "", fail(ReasonMalformed)
		}
		lifetime = time.Duration(n) * time.Second
	}
	margin := min(lifetime/10, maxRefreshMargin)
	e := &tokenEntry{sandbox: sandbox, access: tr.AccessToken, expires: start.Add(lifetime - margin)}
	rotated := tr.RefreshToken != "" && tr.RefreshToken != refresh && cfg.Grant == policy.GrantRefreshToken
	if rotated {
		if !httpguts.ValidHeaderFieldValue(tr.RefreshToken) {
			return "", fail(ReasonMalformed)
		}
		if !o.storeRefresh(ctx, sandbox, cfg.RefreshToken, tr.RefreshToken) {
			orig := refresh
			o.mu.Lock()
			if old := o.cache[ck]; old != nil && old.refresh == refresh {
				orig = old.rotatedFrom // a chain of in-memory rotations
			}
			o.mu.Unlock()
			e.refresh, e.rotatedFrom = tr.RefreshToken, orig
		}
	} else if cfg.Grant == policy.GrantRefreshToken {
		o.mu.Lock()
		if old := o.cache[ck]; old != nil {
			e.refresh, e.rotatedFrom = old.refresh, old.rotatedFrom
		}
		o.mu.Unlock()
	}
	o.mu.Lock()
	if len(o.cache) >= maxCallbackCache {
		// Entries of rotated client secrets or detached sandboxes: drop
		// the expired ones, or all (tokens are minted again on demand;
		// in-memory refresh rotations are lost only with no store).
		now := o.now()
		for k, old := range o.cache {
			if !now.Before(old.expires) && old.refresh == "" {
				delete(o.cache, k)
			}
		}
		if len(o.cache) >= maxCallbackCache {
			clear(o.cache)
		}
	}
	o.cache[ck] = e
	o.mu.Unlock()
	o.log.Debug("oauth2 token minted", "sandbox", sandbox, "endpoint", target, "grant", cfg.Grant,
		"lifetime", lifetime, "refresh_rotated", rotated)
	return tr.AccessToken, nil
}

// storeRefresh writes a rotated refresh token back where the old one
// lives: the sandbox's scope if the store has it there, else global. It
// reports whether the Lookuper will now return it.
func (o *OAuth2) storeRefresh(ctx context.Context, sandbox, name, value string) bool {
	if o.persist == nil {
		return false
	}
	scope := Global
	if sandbox != "" {
		if _, err := o.persist.Get(SandboxScope(sandbox), name); err == nil {
			scope = SandboxScope(sandbox)
		}
	}
	if err := o.persist.Set(scope, name, value); err != nil {
		o.log.Warn("storing a rotated oauth2 refresh token failed; keeping it in memory", "secret", name, "scope", scope.String(), "err", err)
		return false
	}
	// Another provider ahead of the store (an environment variable, a
	// file) may still shadow it.
	got, err := o.secrets.Lookup(ctx, sandbox, name)
	return err == nil && got == value
}

// oauthErrorCode returns the "error" field of an RFC 6749 error answer if it
// is a plain code (lower-case letters and _), else "".
func oauthErrorCode(raw []byte) string {
	var v struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(raw, &v) != nil || v.Error == "" || len(v.Error) > 40 {
		return ""
	}
	for _, c := range v.Error {
		if (c < 'a' || c > 'z') && c != '_' {
			return ""
		}
	}
	return v.Error
}
