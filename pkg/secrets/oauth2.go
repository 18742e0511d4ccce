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
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/sync/singleflight"
)

// Lookuper resolves a named secret for a sandbox (sandbox scope, then
// global). *Chain implements it.
type Lookuper interface {
	Lookup(ctx context.Context, sandbox, name string) (string, error)
}

var _ Lookuper = (*Chain)(nil)

// OAuth2 grant types.
const (
	GrantClientCredentials = "client_credentials"
	GrantRefreshToken      = "refresh_token"
)

// OAuth2 client authentication styles.
const (
	// AuthBasic sends client_id:client_secret as HTTP Basic (RFC 6749 2.3.1).
	AuthBasic = "basic"
	// AuthParams sends client_id and client_secret in the form body.
	AuthParams = "params"
)

// DefaultTokenLifetime applies when a token response has no expires_in.
const DefaultTokenLifetime = 5 * time.Minute

// maxRefreshMargin bounds how long before expiry a token is refreshed.
const maxRefreshMargin = time.Minute

// ErrTokenFailed is matched (errors.Is) by every token minting failure.
var ErrTokenFailed = errors.New("oauth2 token request failed")

// OAuth2Config describes one token to mint. Secret inputs are given by NAME
// and resolved through the Lookuper for the sandbox at each use, so a
// rotated client secret or refresh token takes effect on the next request.
type OAuth2Config struct {
	TokenURL string   `yaml:"token_url" json:"token_url"`
	Grant    string   `yaml:"grant" json:"grant"`         // GrantClientCredentials or GrantRefreshToken
	ClientID string   `yaml:"client_id" json:"client_id"` // not secret; may be empty for refresh_token grants
	Scopes   []string `yaml:"scopes" json:"scopes"`       // sent space-separated as scope
	// ClientSecret is the NAME of the secret holding the client secret ("":
	// a public client that sends only client_id).
	ClientSecret string `yaml:"client_secret" json:"client_secret"`
	// RefreshToken is the NAME of the secret holding the refresh token
	// (required for GrantRefreshToken).
	RefreshToken string `yaml:"refresh_token" json:"refresh_token"`
	// AuthStyle is AuthBasic (default) or AuthParams.
	AuthStyle string `yaml:"auth_style" json:"auth_style"`
	// Params are extra, non-secret form parameters (audience, resource).
	Params map[string]string `yaml:"params" json:"params"`
	// Timeout bounds one token request (default DefaultCallbackTimeout).
	Timeout time.Duration `yaml:"timeout" json:"timeout"`
}

func (c *OAuth2Config) validate() error {
	u, err := url.Parse(c.TokenURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("token_url must be an http or https URL")
	}
	switch c.Grant {
	case GrantClientCredentials:
		if c.ClientID == "" {
			return errors.New("client_credentials needs a client_id")
		}
	case GrantRefreshToken:
		if c.RefreshToken == "" {
			return errors.New("refresh_token grant needs the name of the refresh token secret")
		}
	default:
		return fmt.Errorf("grant %q: expect 'client_credentials' or 'refresh_token'", c.Grant)
	}
	switch c.AuthStyle {
	case "", AuthBasic, AuthParams:
	default:
		return fmt.Errorf("auth style %q: expect 'basic' or 'params'", c.AuthStyle)
	}
	for _, n := range []string{c.ClientSecret, c.RefreshToken} {
		if n != "" && !ValidName(n) {
			return fmt.Errorf("invalid secret name %q", n)
		}
	}
	return nil
}

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

// OAuth2 mints access tokens outside the sandbox and caches each until
// shortly before it expires; concurrent misses make one request. The cache
// is keyed by the config and the resolved secret inputs, not by sandbox:
// sandboxes whose inputs resolve to the same values (e.g. one global refresh
// token) share one token and one refresh chain, which keeps refresh token
// rotation working; per-sandbox inputs give per-sandbox tokens. A token
// endpoint that returns a new refresh token has it used (in memory) for the
// next refresh. It is also a Provider: Register exposes a minted token as a
// named secret, usable as {NAME} in a header. Safe for concurrent use.
type OAuth2 struct {
	secrets Lookuper
	client  *http.Client
	log     *slog.Logger
	now     func() time.Time

	sf    singleflight.Group
	mu    sync.Mutex
	cache map[string]*tokenEntry
	named map[string]OAuth2Config
}

type tokenEntry struct {
	access  string
	expires time.Time // refresh at or after this time
	refresh string    // a rotated refresh token, "" if none
}

var _ Provider = (*OAuth2)(nil)

// NewOAuth2 returns a token minter whose secret inputs come from secrets
// (typically a Chain without this OAuth2 in it). client may be nil; log must
// not be nil.
func NewOAuth2(secrets Lookuper, client *http.Client, log *slog.Logger) *OAuth2 {
	var cl http.Client
	if client != nil {
		cl = *client
	} else {
		cl.Transport = &http.Transport{Proxy: nil, DialContext: (&net.Dialer{Timeout: 10 * time.Second}).DialContext, MaxIdleConnsPerHost: 4, IdleConnTimeout: 90 * time.Second}
	}
	cl.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &OAuth2{secrets: secrets, client: &cl, log: log, now: time.Now, cache: map[string]*tokenEntry{}, named: map[string]OAuth2Config{}}
}

// Register exposes the token described by cfg as the secret name, so a
// header `Bearer {name}` injects a minted access token.
func (o *OAuth2) Register(name string, cfg OAuth2Config) error {
	if err := checkName(name); err != nil {
		return err
	}
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("oauth2 token %s: %w", name, err)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.named[name] = cfg
	return nil
}

// Secret implements Provider for registered names: the token is minted with
// inputs resolved for scope's sandbox.
func (o *OAuth2) Secret(ctx context.Context, scope Scope, name string) (string, error) {
	o.mu.Lock()
	cfg, ok := o.named[name]
	o.mu.Unlock()
	if !ok {
		return "", fmt.Errorf("secret %s (%s): not an oauth2 token: %w", name, scope, ErrNotFound)
	}
	tok, err := o.Token(ctx, scope.Sandbox(), cfg)
	if err != nil {
		// %v, not %w: a missing input must stop the Chain with this
		// message instead of reading as "no such token".
		return "", fmt.Errorf("oauth2 token %s: %v", name, err)
	}
	return tok, nil
}

// Token returns a valid access token for sandbox, from the cache or from
// the token endpoint. Any failure is an error (fail closed).
func (o *OAuth2) Token(ctx context.Context, sandbox string, cfg OAuth2Config) (string, error) {
	if err := cfg.validate(); err != nil {
		return "", fmt.Errorf("oauth2: %w", err)
	}
	var secret, refresh string
	var err error
	if cfg.ClientSecret != "" {
		if secret, err = o.secrets.Lookup(ctx, sandbox, cfg.ClientSecret); err != nil {
			return "", fmt.Errorf("oauth2 client secret: %w", err)
		}
	}
	if cfg.Grant == GrantRefreshToken {
		if refresh, err = o.secrets.Lookup(ctx, sandbox, cfg.RefreshToken); err != nil {
			return "", fmt.Errorf("oauth2 refresh token: %w", err)
		}
	}
	key := tokenKey(&cfg, secret, refresh)
	if tok, ok := o.cached(key); ok {
		return tok, nil
	}
	u, _ := url.Parse(cfg.TokenURL)
	target := u.Scheme + "://" + u.Host
	ch := o.sf.DoChan(key, func() (any, error) {
		if tok, ok := o.cached(key); ok {
			return tok, nil
		}
		o.mu.Lock()
		if e := o.cache[key]; e != nil && e.refresh != "" {
			refresh = e.refresh // the endpoint rotated it
		}
		o.mu.Unlock()
		return o.fetch(context.WithoutCancel(ctx), key, target, sandbox, &cfg, secret, refresh)
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

// tokenKey identifies a cache entry: a digest of the config and the secret
// inputs (so a rotated input gets a fresh token). It stays in memory.
func tokenKey(c *OAuth2Config, secret, refresh string) string {
	h := sha256.New()
	for _, s := range []string{c.TokenURL, c.Grant, c.ClientID, strings.Join(c.Scopes, " "), c.ClientSecret, c.RefreshToken, c.AuthStyle, secret, refresh} {
		fmt.Fprintf(h, "%d:%s;", len(s), s)
	}
	keys := make([]string, 0, len(c.Params))
	for k := range c.Params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(h, "%d:%s=%d:%s;", len(k), k, len(c.Params[k]), c.Params[k])
	}
	return hex.EncodeToString(h.Sum(nil))
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

func (o *OAuth2) fetch(ctx context.Context, key, target, sandbox string, cfg *OAuth2Config, secret, refresh string) (string, error) {
	fail := func(reason string) error { return &TokenError{Reason: reason, Target: target} }
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultCallbackTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	form := url.Values{}
	for k, v := range cfg.Params {
		form.Set(k, v)
	}
	form.Set("grant_type", cfg.Grant)
	if len(cfg.Scopes) > 0 {
		form.Set("scope", strings.Join(cfg.Scopes, " "))
	}
	if cfg.Grant == GrantRefreshToken {
		form.Set("refresh_token", refresh)
	}
	basic := cfg.AuthStyle != AuthParams && secret != ""
	if !basic && cfg.ClientID != "" {
		form.Set("client_id", cfg.ClientID)
	}
	if !basic && secret != "" {
		form.Set("client_secret", secret)
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
	e := &tokenEntry{access: tr.AccessToken, expires: start.Add(lifetime - margin)}
	if tr.RefreshToken != "" && tr.RefreshToken != refresh {
		e.refresh = tr.RefreshToken
	} else if refresh != "" {
		o.mu.Lock()
		if old := o.cache[key]; old != nil {
			e.refresh = old.refresh
		}
		o.mu.Unlock()
	}
	o.mu.Lock()
	o.cache[key] = e
	o.mu.Unlock()
	o.log.Debug("oauth2 token minted", "sandbox", sandbox, "endpoint", target, "grant", cfg.Grant,
		"lifetime", lifetime, "refresh_rotated", tr.RefreshToken != "" && tr.RefreshToken != refresh)
	return tr.AccessToken, nil
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
