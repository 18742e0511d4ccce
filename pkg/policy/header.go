package policy

import (
	"errors"
	"fmt"
	"net/textproto"
	"strings"
)

// credentialHeaders are header names whose values are credentials by
// definition: a plaintext value for one of them draws a warning, and
// Redacted never shows it.
var credentialHeaders = map[string]bool{
	"Authorization":       true,
	"Proxy-Authorization": true,
	"Cookie":              true,
	"X-Api-Key":           true,
	"Api-Key":             true,
	"X-Auth-Token":        true,
	"Private-Token":       true,
}

// reservedHeaders are managed by the proxy and cannot be injected.
var reservedHeaders = map[string]bool{
	"Host":              true,
	"Content-Length":    true,
	"Transfer-Encoding": true,
	"Connection":        true,
	"Upgrade":           true,
	"Te":                true,
	"Trailer":           true,
	"Keep-Alive":        true,
	"Proxy-Connection":  true,
}

// Render returns the header value to inject. For a secret header each
// {NAME} placeholder is replaced by lookup(NAME); plaintext and opaque
// values are returned as written. An error names the secret, never a
// value.
func (h Header) Render(lookup func(name string) (string, error)) (string, error) {
	if h.Type != HeaderSecret {
		return h.Value, nil
	}
	var b strings.Builder
	v := h.Value
	for {
		i := strings.IndexByte(v, '{')
		if i < 0 {
			b.WriteString(v)
			return b.String(), nil
		}
		j := strings.IndexByte(v[i:], '}')
		if j < 0 {
			return "", fmt.Errorf("header %s: unclosed placeholder", h.Name)
		}
		name := v[i+1 : i+j]
		if lookup == nil {
			return "", fmt.Errorf("header %s: secret %s: no secret source", h.Name, name)
		}
		val, err := lookup(name)
		if err != nil {
			return "", fmt.Errorf("header %s: secret %s: %w", h.Name, name, err)
		}
		if strings.ContainsAny(val, "\r\n\x00") {
			return "", fmt.Errorf("header %s: secret %s: %w", h.Name, name, errBadSecretValue)
		}
		b.WriteString(v[:i])
		b.WriteString(val)
		v = v[i+j+1:]
	}
}

var errBadSecretValue = errors.New("value contains CR, LF or NUL and cannot go in a header")

// Redacted returns the value fit for display: each secret placeholder
// becomes <secret:NAME> ("Bearer <secret:OPENAI_API_KEY>"), an opaque value
// is "<opaque>", a plaintext value is shown as written except for
// credential headers (Authorization, Cookie, X-Api-Key ...), shown as
// "<plaintext>".
func (h Header) Redacted() string {
	switch h.Type {
	case HeaderOpaque:
		return "<opaque>"
	case HeaderPlaintext:
		if credentialHeaders[textproto.CanonicalMIMEHeaderKey(h.Name)] {
			return "<plaintext>"
		}
		return h.Value
	}
	out, err := h.Render(func(name string) (string, error) { return "<secret:" + name + ">", nil })
	if err != nil {
		return "<secret>"
	}
	return out
}

// placeholders parses the {NAME} placeholders of a secret header value.
// Every '{' must open a placeholder and every '}' close one.
func placeholders(v string) ([]string, string) {
	var names []string
	for i := 0; i < len(v); i++ {
		switch v[i] {
		case '}':
			return nil, fmt.Sprintf("stray '}' at offset %d; placeholders are written {NAME}", i)
		case '{':
			j := strings.IndexByte(v[i:], '}')
			if j < 0 {
				return nil, fmt.Sprintf("unclosed '{' at offset %d; placeholders are written {NAME}", i)
			}
			name := v[i+1 : i+j]
			if !validSecretName(name) {
				return nil, fmt.Sprintf("placeholder {%s} is not a secret name (1-128 characters from A-Z a-z 0-9 _ . -, not starting with . or -)", name)
			}
			names = append(names, name)
			i += j
		}
	}
	return names, ""
}

// validSecretName matches the secret store's rule for names.
func validSecretName(s string) bool {
	if s == "" || len(s) > 128 || s[0] == '.' || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '.', c == '-':
		default:
			return false
		}
	}
	return true
}

// validToken reports whether s is an HTTP token (header name, method).
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}
