package secrets

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sluice-dev/sluice/pkg/policy"
	"github.com/sluice-dev/sluice/pkg/testutil"
)

const awsSecretCanary = "wJalrXUtnFEMI-K7MDENG-CANARY-2a7d01"

func TestSigV4SignRequest(t *testing.T) {
	s := NewSigV4(NewChain(Static{"AWS_SECRET": awsSecretCanary, "AWS_TOKEN": "tok-CANARY-3f", "AWS_ID": "AKIDFROMSTORE"}))
	for _, tc := range []struct {
		name string
		cfg  *policy.AWSSigV4
		id   string
		tok  string
		body string
	}{
		{"s3 literal id", &policy.AWSSigV4{Region: "us-east-1", Service: "s3", AccessKeyID: "AKIAEXAMPLE", SecretAccessKey: "AWS_SECRET"}, "AKIAEXAMPLE", "", ""},
		{"execute-api session token", &policy.AWSSigV4{Region: "eu-west-1", Service: "execute-api", AccessKeyIDSecret: "AWS_ID", SecretAccessKey: "AWS_SECRET", SessionToken: "AWS_TOKEN"}, "AKIDFROMSTORE", "tok-CANARY-3f", `{"a":1}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("PUT", "https://bucket.example/a%20b/key?list-type=2&X-Amz-Signature=forged&X-Amz-Credential=SANDBOX%2F1&prefix=x+y", strings.NewReader(tc.body))
			r.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=SANDBOX/forged")
			r.Header.Set("X-Amz-Security-Token", "sandbox-token")
			r.Header.Set("X-Amz-Date", "19990101T000000Z")
			r.Header.Set("X-Amz-Meta-Owner", "alice")
			r.Header.Set("Content-Type", "application/json")
			hash := payloadHashOf([]byte(tc.body))
			set, err := s.SignRequest(context.Background(), "box", tc.cfg, r, "https", "bucket.example", hash)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range set {
				r.Header[k] = v
			}
			if strings.Contains(r.URL.RawQuery, "X-Amz-Signature") || strings.Contains(r.URL.RawQuery, "X-Amz-Credential") || !strings.Contains(r.URL.RawQuery, "prefix=x%20y") {
				t.Fatalf("query %q", r.URL.RawQuery)
			}
			if tc.tok == "" && r.Header.Get("X-Amz-Security-Token") != "" {
				t.Fatal("the sandbox's session token was forwarded")
			}
			// What an AWS endpoint sees: r as forwarded, Host and all.
			fwd := r.Clone(context.Background())
			fwd.Host = "bucket.example"
			id, err := testutil.VerifySigV4(fwd, []byte(tc.body), tc.id, awsSecretCanary, tc.tok, tc.cfg.Region, tc.cfg.Service)
			if err != nil || id != tc.id {
				t.Fatalf("verify: id %q, %v", id, err)
			}
			if !strings.Contains(set.Get("Authorization"), "x-amz-meta-owner") {
				t.Fatalf("X-Amz-Meta-Owner not signed: %s", set.Get("Authorization"))
			}
			// A wrong secret key does not verify.
			if _, err := testutil.VerifySigV4(fwd, []byte(tc.body), tc.id, "other", tc.tok, tc.cfg.Region, tc.cfg.Service); err == nil {
				t.Fatal("verified with the wrong key")
			}
			for k, vs := range r.Header {
				for _, v := range vs {
					noLeak(t, "header "+k, v, awsSecretCanary)
				}
			}
			noLeak(t, "query", r.URL.RawQuery, awsSecretCanary)
		})
	}
	// A missing key fails and names the secret, not a value.
	_, err := s.SignRequest(context.Background(), "box", &policy.AWSSigV4{Region: "r", Service: "s3", AccessKeyID: "A", SecretAccessKey: "NOPE"},
		httptest.NewRequest("GET", "https://x/", nil), "https", "x", EmptyPayloadHash)
	if err == nil || !strings.Contains(err.Error(), "NOPE") {
		t.Fatalf("missing key: %v", err)
	}
}

func payloadHashOf(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
