package secrets

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/sluice-dev/sluice/pkg/policy"
)

// UnsignedPayload is the payload hash of a request whose body is not part
// of the signature (streaming or large bodies; accepted by S3 and the
// services that take X-Amz-Content-Sha256: UNSIGNED-PAYLOAD).
const UnsignedPayload = "UNSIGNED-PAYLOAD"

// EmptyPayloadHash is the hex SHA-256 of an empty body.
const EmptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// sandboxSignatureHeaders are dropped from every request an aws_sigv4 rule
// signs: whatever signature or token the sandbox sent is never forwarded.
var sandboxSignatureHeaders = []string{"Authorization", "X-Amz-Date", "X-Amz-Security-Token", "X-Amz-Content-Sha256"}

// presignParams are the query parameters of a presigned URL (lower case).
var presignParams = map[string]bool{
	"x-amz-algorithm": true, "x-amz-credential": true, "x-amz-date": true, "x-amz-expires": true,
	"x-amz-signedheaders": true, "x-amz-signature": true, "x-amz-security-token": true,
}

// SigV4 signs forwarded requests for the aws_sigv4 blocks of policy rules
// with the AWS SDK for Go v2 signer. The keys are resolved per request
// through the Lookuper; the secret access key never leaves sluice (only
// the HMAC-derived signature does). Safe for concurrent use.
type SigV4 struct {
	secrets Lookuper
	signer  *v4.Signer
	now     func() time.Time
}

// NewSigV4 returns a signer whose keys come from secrets.
func NewSigV4(secrets Lookuper) *SigV4 {
	return &SigV4{secrets: secrets, signer: v4.NewSigner(), now: time.Now}
}

// SignRequest drops any AWS signature r carries (the headers Authorization,
// X-Amz-Date, X-Amz-Security-Token, X-Amz-Content-Sha256 and presigned
// X-Amz-* query parameters) and signs r as it will be forwarded: method,
// path, query (r.URL.RawQuery is replaced by its canonical form, the one
// signed), host (the Host sent upstream), Content-Type, Content-MD5 and
// the other X-Amz-* headers. payloadHash is PayloadHash of the body,
// EmptyPayloadHash, or UnsignedPayload. It returns the headers to set on
// the forwarded request. Errors name secrets, never values.
func (s *SigV4) SignRequest(ctx context.Context, sandbox string, cfg *policy.AWSSigV4, r *http.Request, scheme, host, payloadHash string) (http.Header, error) {
	creds := aws.Credentials{AccessKeyID: cfg.AccessKeyID, Source: "sluice"}
	var err error
	if cfg.AccessKeyIDSecret != "" {
		if creds.AccessKeyID, err = s.secrets.Lookup(ctx, sandbox, cfg.AccessKeyIDSecret); err != nil {
			return nil, fmt.Errorf("aws_sigv4 access key id: %w", err)
		}
	}
	if creds.SecretAccessKey, err = s.secrets.Lookup(ctx, sandbox, cfg.SecretAccessKey); err != nil {
		return nil, fmt.Errorf("aws_sigv4 secret access key: %w", err)
	}
	if cfg.SessionToken != "" {
		if creds.SessionToken, err = s.secrets.Lookup(ctx, sandbox, cfg.SessionToken); err != nil {
			return nil, fmt.Errorf("aws_sigv4 session token: %w", err)
		}
	}
	for _, h := range sandboxSignatureHeaders {
		r.Header.Del(h)
	}
	q, _ := url.ParseQuery(r.URL.RawQuery)
	for k := range q {
		if presignParams[strings.ToLower(k)] {
			delete(q, k)
		}
	}
	// Only headers the forwarding path never changes are signed.
	c := &http.Request{
		Method: r.Method,
		URL:    &url.URL{Scheme: scheme, Host: host, Path: r.URL.Path, RawPath: r.URL.RawPath, RawQuery: q.Encode()},
		Host:   host,
		Header: http.Header{},
	}
	for k, v := range r.Header {
		if ck := http.CanonicalHeaderKey(k); strings.HasPrefix(ck, "X-Amz-") || ck == "Content-Type" || ck == "Content-Md5" {
			c.Header[ck] = v
		}
	}
	c.Header.Set("X-Amz-Content-Sha256", payloadHash)
	err = s.signer.SignHTTP(ctx, creds, c, payloadHash, cfg.Service, cfg.Region, s.now(), func(o *v4.SignerOptions) {
		// S3 signs the path as sent; every other service escapes it again.
		o.DisableURIPathEscaping = cfg.Service == "s3"
	})
	if err != nil {
		return nil, fmt.Errorf("aws_sigv4: signing failed for %s/%s", cfg.Service, cfg.Region)
	}
	r.URL.RawQuery = c.URL.RawQuery
	out := http.Header{}
	for _, h := range sandboxSignatureHeaders {
		if v := c.Header.Get(h); v != "" {
			out.Set(h, v)
		}
	}
	return out, nil
}
