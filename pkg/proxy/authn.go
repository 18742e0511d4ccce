package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"slices"

	"github.com/sluice-dev/sluice/pkg/policy"
)

// Tokens mints the access token of a rule's oauth2 block for a sandbox
// (cached, fail closed). *secrets.OAuth2 implements it.
type Tokens interface {
	Token(ctx context.Context, sandbox, rule string, cfg *policy.OAuth2) (string, error)
}

// RequestSigner signs a request for a rule's aws_sigv4 block: it drops the
// signature the sandbox sent, rewrites r's query to the signed canonical
// form and returns the headers to set upstream. *secrets.SigV4 implements
// it.
type RequestSigner interface {
	SignRequest(ctx context.Context, sandbox string, cfg *policy.AWSSigV4, r *http.Request, scheme, host, payloadHash string) (http.Header, error)
}

// Payload hashes of SigV4 (see secrets.UnsignedPayload).
const (
	unsignedPayload  = "UNSIGNED-PAYLOAD"
	emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
)

// maxSignedBody is the largest request body (of known length) hashed into
// a SigV4 signature; larger and streaming (chunked) bodies, and bodies a
// client sends only after 100 Continue, are signed as UNSIGNED-PAYLOAD.
const maxSignedBody = 1 << 20

// ruleAuth adds what a rule's oauth2 or aws_sigv4 block injects to
// rs.inject (after credentials) and the secret values to the response
// redactor. It returns a message (never a secret or the token endpoint's
// answer) on failure.
func (s *server) ruleAuth(ctx context.Context, r *http.Request, rs *reqState, rule *policy.Rule) string {
	var values []string
	if rs.secrets != nil && rs.red.ps != nil {
		values = slices.Clone(rs.red.ps.values)
	}
	n := len(values)
	values, msg := s.ruleAuthValues(ctx, r, rs, rule, values)
	if msg != "" {
		return msg
	}
	if len(values) > n && rs.red.init(values) {
		rs.secrets = &rs.red
	}
	return ""
}

// ruleAuthValues fills rs.inject and returns values with the secret
// values it injected appended.
func (s *server) ruleAuthValues(ctx context.Context, r *http.Request, rs *reqState, rule *policy.Rule, values []string) ([]string, string) {
	if o := rule.OAuth2; o != nil {
		if s.sb.Tokens == nil {
			return values, fmt.Sprintf("oauth2 token for rule %s: no token minter", rule.Name)
		}
		tok, err := s.sb.Tokens.Token(ctx, s.sb.Name, rule.Name, o)
		if err != nil {
			return values, fmt.Sprintf("oauth2 token for rule %s: %v", rule.Name, err)
		}
		rs.inject = append(rs.inject, injected{name: "Authorization", value: "Bearer " + tok})
		values = append(values, tok)
	}
	if a := rule.AWSSigV4; a != nil {
		if s.sb.Signer == nil {
			return values, fmt.Sprintf("aws_sigv4 for rule %s: no signer", rule.Name)
		}
		hash, err := bufferForSigning(r, rs.expect)
		if err != nil {
			return values, fmt.Sprintf("aws_sigv4 for rule %s: %v", rule.Name, err)
		}
		set, err := s.sb.Signer.SignRequest(ctx, s.sb.Name, a, r, rs.scheme, hostOfAuthority(rs.outHost, rs.scheme), hash)
		if err != nil {
			return values, fmt.Sprintf("aws_sigv4 for rule %s: %v", rule.Name, err)
		}
		for k, vs := range set {
			for _, v := range vs {
				rs.inject = append(rs.inject, injected{name: k, value: v})
				if k == "X-Amz-Security-Token" {
					values = append(values, v)
				}
			}
		}
	}
	return values, ""
}

// bufferForSigning returns the SigV4 payload hash of r's body as it will be
// forwarded (gate calls it after shaping): the SHA-256 of a body that
// shaping already holds in memory, or of a body of known length up to
// maxSignedBody (read into memory and put back, unless the client waits
// for 100 Continue: expect), else UNSIGNED-PAYLOAD.
func bufferForSigning(r *http.Request, expect bool) (string, error) {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return emptyPayloadHash, nil
	}
	if sb, ok := r.Body.(*shapedBody); ok && sb.whole != nil && int64(len(sb.whole)) == r.ContentLength {
		sum := sha256.Sum256(sb.whole)
		return hex.EncodeToString(sum[:]), nil
	}
	if r.ContentLength < 0 || r.ContentLength > maxSignedBody || expect {
		return unsignedPayload, nil
	}
	buf := make([]byte, r.ContentLength)
	if _, err := io.ReadFull(r.Body, buf); err != nil {
		return "", fmt.Errorf("reading the request body to sign it: %w", err)
	}
	r.Body = struct {
		io.Reader
		io.Closer
	}{bytes.NewReader(buf), r.Body}
	sum := sha256.Sum256(buf)
	return hex.EncodeToString(sum[:]), nil
}

// hostOfAuthority is the Host value SigV4 signs: the authority sent
// upstream without the scheme's default port.
func hostOfAuthority(authority, scheme string) string {
	if h, ok := hostOnly(authority); ok && (scheme == "https" && authority == h+":443" || scheme == "http" && authority == h+":80") {
		return h
	}
	return authority
}
