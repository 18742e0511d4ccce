package policy

import (
	"fmt"
	"strings"
)

// The canonical request target. The proxy and `sluice policy explain`
// decide on the same form of a request (Prepare, then MatchPrepared), and
// the proxy forwards exactly that form, so the bytes an upstream sees are
// the bytes the policy matched. Upstreams disagree on how they read a path
// (Tomcat drops ";params", IIS turns '\' into '/', many merge "//" or
// decode "%2F"); anything they could read as another path is refused
// instead of guessed at:
//
//   - percent-encoded unreserved characters (A-Z a-z 0-9 - . _ ~) are
//     decoded, other escapes get upper-case hex, and bytes that may not
//     appear raw in a path (space excepted: refused) are escaped;
//   - refused (400): empty segments ("//"), "." and ".." segments (also
//     encoded, "%2e"), segments that begin or end with a space (%20),
//     ';' (raw or %3B), '\' (raw or %5C), %2F, %3F and
//     %23 inside a segment, %25 followed by two hex digits (double
//     encoding), invalid escapes, control bytes and NUL (raw or encoded),
//     a raw '#', the asterisk form and any target that is neither
//     origin-form ("/...") nor an absolute-form URI whose authority is the
//     request's host;
//   - one trailing '/' is kept: "/a/" and "/a" are different paths (see
//     MatchRequest for how deny rules treat it);
//   - the query is forwarded as sent but must hold no '#', control byte or
//     invalid escape; paths patterns never see it.
//
// Patterns in paths are written decoded, so they are matched against the
// canonical path with its remaining escapes decoded (Target.Match): once
// %2F, %3F, %23, %3B, %5C and %25XX are refused, every decoded segment is
// exactly one segment of the forwarded path.

// Target is a request target in canonical form.
type Target struct {
	// Path is the canonical path, as forwarded.
	Path string
	// Match is Path with every escape decoded: what path patterns match.
	Match string
	// Query is the query as sent, without the '?'; "" when there is none
	// (an empty query is dropped).
	Query string
}

// String is the origin-form target forwarded upstream.
func (t Target) String() string {
	if t.Query == "" {
		return t.Path
	}
	return t.Path + "?" + t.Query
}

// TargetError is a request target or method the proxy refuses as
// ambiguous (HTTP 400).
type TargetError struct{ Reason string }

func (e *TargetError) Error() string { return e.Reason }

func targetErr(format string, args ...any) error {
	return &TargetError{Reason: fmt.Sprintf(format, args...)}
}

const upperHex = "0123456789ABCDEF"

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func unreserved(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

// pathRaw reports whether c may appear unescaped in a canonical path
// segment: unreserved, sub-delims other than ';', ':' and '@'.
func pathRaw(c byte) bool {
	return unreserved(c) || strings.IndexByte("!$&'()*+,=:@", c) >= 0
}

func ctl(c byte) bool { return c < 0x21 || c == 0x7f }

// NormalizeTarget returns the canonical form of a request target (the
// request line's target, or HTTP/2's :path) for a request to host (the
// Host or :authority, port optional). An absolute-form target must name
// host. Errors are *TargetError. It is pure and safe for concurrent use.
func NormalizeTarget(target, host string) (Target, error) {
	if target == "" {
		return Target{}, targetErr("empty request target")
	}
	for i := 0; i < len(target); i++ {
		if c := target[i]; ctl(c) {
			return Target{}, targetErr("the request target holds a space or control byte (0x%02x)", c)
		}
	}
	if strings.IndexByte(target, '#') >= 0 {
		return Target{}, targetErr("the request target holds a '#'")
	}
	if target[0] != '/' {
		rest, err := absoluteForm(target, host)
		if err != nil {
			return Target{}, err
		}
		target = rest
	}
	raw, query, _ := strings.Cut(target, "?")
	if err := checkEscapes(query); err != nil {
		return Target{}, targetErr("query: %s", err.(*TargetError).Reason)
	}
	if clean(raw) {
		// Nothing to decode or escape (the common case): no copy.
		if err := checkSegments(raw); err != nil {
			return Target{}, err
		}
		return Target{Path: raw, Match: raw, Query: query}, nil
	}
	var path, match strings.Builder
	path.Grow(len(raw))
	match.Grow(len(raw))
	segStart := 0 // in match
	endSeg := func(last bool) error {
		seg := match.String()[segStart:]
		switch {
		case seg == "" && !last:
			return targetErr("empty path segment (\"//\")")
		case seg == "." || seg == "..":
			return targetErr("%q path segment", seg)
		case seg != "" && (seg[0] == ' ' || seg[len(seg)-1] == ' '):
			// Spring (trimTokens) and others trim segments: "/admin%20" is "/admin" there.
			return targetErr("path segment %q begins or ends with a space", seg)
		}
		return nil
	}
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case c == '/':
			if i > 0 {
				if err := endSeg(false); err != nil {
					return Target{}, err
				}
			}
			path.WriteByte('/')
			match.WriteByte('/')
			segStart = match.Len()
			continue
		case c == ';':
			return Target{}, targetErr("';' in the path (path parameters are read differently by each server)")
		case c == '\\':
			return Target{}, targetErr("'\\' in the path")
		case c != '%':
			if pathRaw(c) {
				path.WriteByte(c)
			} else {
				path.WriteByte('%')
				path.WriteByte(upperHex[c>>4])
				path.WriteByte(upperHex[c&15])
			}
			match.WriteByte(c)
			continue
		}
		b, err := unescape(raw, i)
		if err != nil {
			return Target{}, err
		}
		i += 2
		switch {
		case unreserved(b):
			path.WriteByte(b)
		case b == '/' || b == '?' || b == '#' || b == ';' || b == '\\':
			return Target{}, targetErr("%s (encoded %q) inside a path segment", raw[i-2:i+1], b)
		case ctl(b) && b != ' ':
			return Target{}, targetErr("encoded control byte %s in the path", raw[i-2:i+1])
		default:
			path.WriteByte('%')
			path.WriteByte(upperHex[b>>4])
			path.WriteByte(upperHex[b&15])
		}
		match.WriteByte(b)
	}
	if path.Len() == 0 {
		// Absolute-form without a path, or a bare query.
		path.WriteByte('/')
		match.WriteByte('/')
	} else if err := endSeg(true); err != nil {
		return Target{}, err
	}
	p := path.String()
	if i := doubleEscape(p); i >= 0 {
		// On the canonical form: "%25%34%31" is "%2541" once decoded.
		return Target{}, targetErr("double percent-encoding %s", p[i:i+5])
	}
	return Target{Path: p, Match: match.String(), Query: query}, nil
}

// doubleEscape returns the index of the first "%25" followed by two hex
// digits in s, or -1.
func doubleEscape(s string) int {
	for i := 0; i+4 < len(s); i++ {
		if s[i] == '%' && s[i+1] == '2' && s[i+2] == '5' && isHex(s[i+3]) && isHex(s[i+4]) {
			return i
		}
	}
	return -1
}

// clean reports whether a path needs no decoding or escaping: a '/'
// followed by raw path characters only.
func clean(raw string) bool {
	if raw == "" || raw[0] != '/' {
		return false
	}
	for i := 1; i < len(raw); i++ {
		if c := raw[i]; c != '/' && !pathRaw(c) {
			return false
		}
	}
	return true
}

// checkSegments refuses empty (but for a trailing '/') and dot segments
// of a clean path.
func checkSegments(p string) error {
	for rest := p[1:]; ; {
		seg, next, more := strings.Cut(rest, "/")
		switch {
		case seg == "" && more:
			return targetErr("empty path segment (\"//\")")
		case seg == "." || seg == "..":
			return targetErr("%q path segment", seg)
		}
		if !more {
			return nil
		}
		rest = next
	}
}

func isHex(c byte) bool { _, ok := unhex(c); return ok }

// unescape decodes the escape at s[i] ('%').
func unescape(s string, i int) (byte, error) {
	if i+2 >= len(s) {
		return 0, targetErr("invalid percent-encoding %q", s[i:])
	}
	h, ok1 := unhex(s[i+1])
	l, ok2 := unhex(s[i+2])
	if !ok1 || !ok2 {
		return 0, targetErr("invalid percent-encoding %q", s[i:i+3])
	}
	return h<<4 | l, nil
}

// checkEscapes refuses invalid escapes and encoded NUL or control bytes.
func checkEscapes(s string) error {
	for i := strings.IndexByte(s, '%'); i >= 0; i = strings.IndexByte(s, '%') {
		b, err := unescape(s, i)
		if err != nil {
			return err
		}
		if ctl(b) && b != ' ' {
			return targetErr("encoded control byte %s", s[i:i+3])
		}
		s = s[i+3:]
	}
	return nil
}

// absoluteForm checks an absolute-form target ("https://host/path") and
// returns its origin-form part. In HTTP/1.1 its authority replaces the
// Host header (RFC 9112 3.2.2), so host is that authority; in HTTP/2 host
// is :authority and a :path naming another host is refused.
func absoluteForm(target, host string) (string, error) {
	if target == "*" {
		return "", targetErr("asterisk-form target \"*\"")
	}
	scheme, rest, ok := strings.Cut(target, "://")
	if !ok || !(strings.EqualFold(scheme, "http") || strings.EqualFold(scheme, "https")) {
		return "", targetErr("the request target is neither a path (\"/...\") nor an http(s) URI")
	}
	end := strings.IndexAny(rest, "/?")
	if end < 0 {
		end = len(rest)
	}
	auth := rest[:end]
	if strings.IndexByte(auth, '@') >= 0 {
		return "", targetErr("user information in the request target")
	}
	if !strings.EqualFold(stripPort(auth), stripPort(host)) || auth == "" {
		return "", targetErr("the request target names %q, not the request's host %q", auth, host)
	}
	rest = rest[end:]
	if rest == "" || rest[0] == '?' {
		rest = "/" + rest
	}
	return rest, nil
}

// stripPort removes a port and IPv6 brackets from a host[:port].
func stripPort(h string) string {
	if strings.HasPrefix(h, "[") {
		if i := strings.IndexByte(h, ']'); i > 0 {
			return h[1:i]
		}
		return h
	}
	if i := strings.LastIndexByte(h, ':'); i >= 0 && strings.IndexByte(h[:i], ':') < 0 {
		h = h[:i]
	}
	return strings.TrimSuffix(h, ".")
}

// Method overrides. Frameworks (Rails, Laravel, Express method-override,
// Symfony, ASP.NET) let a request say "treat me as DELETE" in one of these
// headers or a _method query parameter. sluice checks every method named
// this way against the rules, as if the request had been sent with it; the
// headers and the parameter are forwarded unchanged when all are allowed.
// A _method field in a form body is not inspected.
var overrideHeaders = []string{"X-Http-Method-Override", "X-Method-Override", "X-Http-Method"}

// Override is a method a request names besides its own.
type Override struct {
	Source string // "X-HTTP-Method-Override header", "_method parameter"
	Method string // upper case
}

// Request is an HTTP request as the proxy received it, before any check.
type Request struct {
	Method string
	// Target is the request target as sent (origin-form or absolute-form).
	Target string
	// Host is the request's Host (or :authority), port optional.
	Host string
	// Header holds the request's headers with canonical keys (an
	// http.Header); only the method override headers are read.
	Header map[string][]string
}

// Prepared is a request in canonical form, ready to be matched.
type Prepared struct {
	Method    string
	Target    Target
	Overrides []Override
}

// Prepare checks the parts of a request that do not depend on the policy:
// the method must be a token in upper case (servers such as Werkzeug read
// "delete" as DELETE, while rules name DELETE), the target is normalised
// (NormalizeTarget), and the methods named by override headers or a
// _method parameter are collected. Errors are *TargetError (HTTP 400).
func Prepare(req Request) (Prepared, error) {
	if !validToken(req.Method) {
		return Prepared{}, targetErr("%q is not an HTTP method", req.Method)
	}
	if strings.ToUpper(req.Method) != req.Method {
		return Prepared{}, targetErr("method %q is not in upper case", req.Method)
	}
	t, err := NormalizeTarget(req.Target, req.Host)
	if err != nil {
		return Prepared{}, err
	}
	pr := Prepared{Method: req.Method, Target: t}
	for _, h := range overrideHeaders {
		for _, v := range req.Header[h] {
			if err := pr.addOverride(canonicalOverrideName(h)+" header", v); err != nil {
				return Prepared{}, err
			}
		}
	}
	for q := t.Query; q != ""; {
		var kv string
		if i := strings.IndexAny(q, "&;"); i >= 0 {
			kv, q = q[:i], q[i+1:]
		} else {
			kv, q = q, ""
		}
		k, v, _ := strings.Cut(kv, "=")
		if !strings.EqualFold(decodeQuery(k), "_method") {
			continue
		}
		if err := pr.addOverride("_method parameter", decodeQuery(v)); err != nil {
			return Prepared{}, err
		}
	}
	return pr, nil
}

func canonicalOverrideName(h string) string {
	return strings.ReplaceAll(h, "Http", "HTTP")
}

func (pr *Prepared) addOverride(src, v string) error {
	v = strings.TrimSpace(v)
	if v == "" {
		return nil
	}
	m := strings.ToUpper(v)
	if !validToken(m) {
		return targetErr("%s %q is not an HTTP method", src, v)
	}
	if m == pr.Method {
		return nil
	}
	for _, o := range pr.Overrides {
		if o.Method == m {
			return nil
		}
	}
	pr.Overrides = append(pr.Overrides, Override{Source: src, Method: m})
	return nil
}

// decodeQuery decodes a query key or value as form decoding does ('+' is
// a space); escapes were validated by NormalizeTarget.
func decodeQuery(s string) string {
	if strings.IndexByte(s, '%') < 0 && strings.IndexByte(s, '+') < 0 {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '+':
			b.WriteByte(' ')
		case c == '%' && i+2 < len(s):
			if x, err := unescape(s, i); err == nil {
				b.WriteByte(x)
				i += 2
				continue
			}
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// MatchPrepared answers the proxy for a prepared request: MatchRequest on
// the canonical path for the request's method, then for every override
// method; the first refusal decides. The deciding rule of an allowed
// request is that of its own method.
func (p *Policy) MatchPrepared(host string, port uint16, pr *Prepared) RequestMatch {
	m := p.MatchRequest(host, port, pr.Method, pr.Target.Match)
	if !m.Allowed {
		return m
	}
	for _, o := range pr.Overrides {
		om := p.MatchRequest(host, port, o.Method, pr.Target.Match)
		if !om.Allowed {
			om.Reason = fmt.Sprintf("the %s names method %s: %s", o.Source, o.Method, om.Reason)
			return om
		}
	}
	return m
}

// asciiLower folds ASCII letters to lower case (other bytes unchanged).
func asciiLower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if c := b[j]; c >= 'A' && c <= 'Z' {
					b[j] = c + 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}
