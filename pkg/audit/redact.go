package audit

import (
	"net/http"
	"net/textproto"
	"slices"
	"strings"
)

// Redacted replaces a query-string value in RedactPath.
const Redacted = "REDACTED"

// RedactedHeader replaces a header value in RedactHeaders.
const RedactedHeader = "<redacted>"

// RedactPath returns a request target fit for an event: the path and the
// query keys are kept, every query value becomes REDACTED and a fragment
// is dropped. "/v1/x?key=abc&flag" gives "/v1/x?key=REDACTED&flag".
// An absolute-form target ("http://user:pw@host/p?q=1") also loses its
// user information. Path segments are kept as sent: a credential in the
// path itself is not detected.
func RedactPath(path string) string {
	if i := strings.IndexByte(path, '#'); i >= 0 {
		path = path[:i]
	}
	if i := strings.Index(path, "://"); i >= 0 && !strings.ContainsAny(path[:i], "/?") {
		// Absolute form: drop user information from the authority.
		rest := path[i+3:]
		end := strings.IndexAny(rest, "/?")
		if end < 0 {
			end = len(rest)
		}
		if at := strings.LastIndexByte(rest[:end], '@'); at >= 0 {
			path = path[:i+3] + rest[at+1:]
		}
	}
	p, q, ok := strings.Cut(path, "?")
	if !ok {
		return p
	}
	if q == "" {
		return p + "?"
	}
	var b strings.Builder
	b.Grow(len(p) + len(q) + 16)
	b.WriteString(p)
	b.WriteByte('?')
	for i, part := range strings.Split(q, "&") {
		if i > 0 {
			b.WriteByte('&')
		}
		k, _, hasValue := strings.Cut(part, "=")
		b.WriteString(k)
		if hasValue {
			b.WriteString("=" + Redacted)
		}
	}
	return b.String()
}

// DefaultHeaderAllowlist are the request and response headers whose values
// RedactHeaders keeps when given no allow-list of its own.
var DefaultHeaderAllowlist = []string{
	"Accept", "Accept-Encoding", "Accept-Language", "Cache-Control",
	"Content-Encoding", "Content-Length", "Content-Type", "Host",
	"Location", "Retry-After", "Server", "User-Agent", "Via",
}

// neverKept are header values RedactHeaders redacts even when allow-listed:
// they carry credentials by definition.
var neverKept = map[string]bool{
	"Authorization":       true,
	"Proxy-Authorization": true,
	"Cookie":              true,
	"Set-Cookie":          true,
	"X-Api-Key":           true,
	"Api-Key":             true,
	"X-Auth-Token":        true,
	"Private-Token":       true,
}

// RedactHeaders returns a copy of h in which only allow-listed header
// values are kept (names compared case-insensitively); every other value
// becomes <redacted>. A nil allow uses DefaultHeaderAllowlist.
// Authorization, Proxy-Authorization, Cookie, Set-Cookie and well-known
// API-key headers are redacted even when allow-listed. Names are kept.
func RedactHeaders(h http.Header, allow []string) http.Header {
	if allow == nil {
		allow = DefaultHeaderAllowlist
	}
	keep := make(map[string]bool, len(allow))
	for _, a := range allow {
		keep[textproto.CanonicalMIMEHeaderKey(a)] = true
	}
	out := make(http.Header, len(h))
	for name, vals := range h {
		c := textproto.CanonicalMIMEHeaderKey(name)
		nv := make([]string, len(vals))
		for i, v := range vals {
			if keep[c] && !neverKept[c] {
				nv[i] = v
			} else {
				nv[i] = RedactedHeader
			}
		}
		out[name] = nv
	}
	return out
}

// HeaderNames returns the canonical names of h, sorted, for
// Event.Injected and similar name-only fields.
func HeaderNames(h http.Header) []string {
	out := make([]string, 0, len(h))
	for name := range h {
		out = append(out, textproto.CanonicalMIMEHeaderKey(name))
	}
	slices.Sort(out)
	return out
}
