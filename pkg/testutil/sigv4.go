package testutil

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// VerifySigV4 checks the AWS Signature Version 4 of a received request the
// way an AWS endpoint does, with the AWS SDK's signer: it recomputes the
// signature from the request's method, path, query and signed headers with
// the given keys and compares. body is the received body (its SHA-256 must
// match X-Amz-Content-Sha256 unless that is UNSIGNED-PAYLOAD). It returns
// the access key id of the credential scope.
func VerifySigV4(r *http.Request, body []byte, accessKeyID, secretKey, sessionToken, region, service string) (string, error) {
	auth := r.Header.Get("Authorization")
	rest, ok := strings.CutPrefix(auth, "AWS4-HMAC-SHA256 ")
	if !ok {
		return "", fmt.Errorf("authorization %q is not AWS4-HMAC-SHA256", auth)
	}
	fields := map[string]string{}
	for _, f := range strings.Split(rest, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(f), "=")
		fields[k] = v
	}
	scope := strings.Split(fields["Credential"], "/")
	if len(scope) != 5 || scope[2] != region || scope[3] != service || scope[4] != "aws4_request" {
		return "", fmt.Errorf("credential scope %q", fields["Credential"])
	}
	if scope[0] != accessKeyID {
		return scope[0], fmt.Errorf("access key id %q in the credential scope, want %q", scope[0], accessKeyID)
	}
	t, err := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date"))
	if err != nil {
		return scope[0], fmt.Errorf("X-Amz-Date: %w", err)
	}
	hash := r.Header.Get("X-Amz-Content-Sha256")
	if hash != "UNSIGNED-PAYLOAD" && hash != sha256Hex(body) {
		return scope[0], fmt.Errorf("payload hash %q does not match the body", hash)
	}
	c := &http.Request{Method: r.Method, URL: &url.URL{Path: r.URL.Path, RawPath: r.URL.RawPath, RawQuery: r.URL.RawQuery}, Host: r.Host, Header: http.Header{}}
	for _, h := range strings.Split(fields["SignedHeaders"], ";") {
		switch h {
		case "host":
		case "content-length":
			c.ContentLength = r.ContentLength
		default:
			if v, ok := r.Header[http.CanonicalHeaderKey(h)]; ok {
				c.Header[http.CanonicalHeaderKey(h)] = v
			} else {
				return scope[0], fmt.Errorf("signed header %s missing", h)
			}
		}
	}
	creds := aws.Credentials{AccessKeyID: accessKeyID, SecretAccessKey: secretKey, SessionToken: sessionToken}
	err = v4.NewSigner().SignHTTP(context.Background(), creds, c, hash, service, region, t, func(o *v4.SignerOptions) {
		o.DisableURIPathEscaping = service == "s3"
	})
	if err != nil {
		return scope[0], err
	}
	if got := c.Header.Get("Authorization"); got != auth {
		return scope[0], fmt.Errorf("signature mismatch:\n got  %s\n want %s", auth, got)
	}
	return scope[0], nil
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
