package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/policy"
	"github.com/sluice-dev/sluice/pkg/secrets"
	"github.com/sluice-dev/sluice/pkg/testutil"
)

// countingSecrets is a secret store that counts its lookups.
type countingSecrets struct {
	fakeSecrets
	n atomic.Int64
}

func (c *countingSecrets) Lookup(ctx context.Context, sandbox, name string) (string, error) {
	c.n.Add(1)
	return c.fakeSecrets.Lookup(ctx, sandbox, name)
}

// countingSigner counts the requests it is asked to sign.
type countingSigner struct {
	RequestSigner
	n atomic.Int64
}

func (c *countingSigner) SignRequest(ctx context.Context, sandbox string, cfg *policy.AWSSigV4, r *http.Request, scheme, host, payloadHash string) (http.Header, error) {
	c.n.Add(1)
	return c.RequestSigner.SignRequest(ctx, sandbox, cfg, r, scheme, host, payloadHash)
}

// signedUpstream verifies the SigV4 signature of every request with the
// AWS SDK's signer (testutil.VerifySigV4) and records what it received.
type signedUpstream struct {
	mu   sync.Mutex
	seen []signedSeen
}

type signedSeen struct {
	body, hash string
	err        error
}

func (u *signedUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err == nil {
		_, err = testutil.VerifySigV4(r, body, "AKIDSLUICETEST", awsKeyCanary, "", "us-east-1", "s3")
	}
	u.mu.Lock()
	u.seen = append(u.seen, signedSeen{string(body), r.Header.Get("X-Amz-Content-Sha256"), err})
	u.mu.Unlock()
	if err != nil {
		http.Error(w, err.Error(), http.StatusForbidden)
		return
	}
	fmt.Fprintf(w, "ok %d", len(body))
}

func (u *signedUpstream) all() []signedSeen {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]signedSeen(nil), u.seen...)
}

const signShapePolicy = `
version: 1
rules:
  - name: s3
    hosts: [s3.test]
    ports: [%d]
    headers: [{name: X-Api-Key, type: secret, value: "{TOKEN}"}]
    request:
      max_body: %s
      deny_body: ["-----BEGIN [A-Z ]*PRIVATE KEY-----"]
      redact_body:
        - {pattern: '\b\d{3}-\d{2}-\d{4}\b', with: "[ssn]"}
    aws_sigv4:
      region: us-east-1
      service: s3
      access_key_id: AKIDSLUICETEST
      secret_access_key: "{AWS_SECRET_ACCESS_KEY}"
`

func signShapeEnv(t *testing.T, maxBody string) (*env, *signedUpstream, *countingSecrets, *countingSigner, string) {
	up := &signedUpstream{}
	srv := newUpstream(t, "127.0.0.1", up)
	dst := addrPort(t, srv.URL)
	store := &countingSecrets{fakeSecrets: fakeSecrets{"TOKEN": "s3cr3t-token-value", "AWS_SECRET_ACCESS_KEY": awsKeyCanary}}
	signer := &countingSigner{RequestSigner: secrets.NewSigV4(store)}
	e := newEnv(t, fmt.Sprintf(signShapePolicy, dst.Port(), maxBody), func(e *env, _ *Config) {
		e.sb.Secrets = store
		e.sb.Signer = signer
	})
	e.bind("s3.test", dst)
	return e, up, store, signer, fmt.Sprintf("https://s3.test:%d", dst.Port())
}

// TestSigV4SignsShapedBody (#20, #22): a rule with redact_body and
// aws_sigv4 signs the body as shaped, so the upstream sees the redacted
// body and a signature that verifies: bodies of known length, chunked
// bodies that end within the prebuffer (hashed) and streamed ones
// (UNSIGNED-PAYLOAD), over HTTP/1.1 (also after Expect: 100-continue) and
// HTTP/2.
func TestSigV4SignsShapedBody(t *testing.T) {
	t.Parallel()
	e, up, _, _, base := signShapeEnv(t, "2MiB")
	const ssn = "123-45-6789"
	small := `{"note":"ssn ` + ssn + ` on file"}`
	redacted := strings.ReplaceAll(small, ssn, "[ssn]")
	big := strings.Repeat("x", policy.PrebufferBody+4096) + " " + ssn + " end"
	bigRedacted := strings.ReplaceAll(big, ssn, "[ssn]")
	for _, h2 := range []bool{false, true} {
		tr := e.transport(h2)
		tr.ExpectContinueTimeout = 10 * time.Second
		t.Cleanup(tr.CloseIdleConnections)
		c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
		for _, tc := range []struct {
			name     string
			body     func() io.Reader
			expect   bool
			want     string
			wantHash string
		}{
			{"known length", func() io.Reader { return strings.NewReader(small) }, false, redacted, payloadHashOf([]byte(redacted))},
			{"chunked, SSN split across writes", func() io.Reader {
				return chunked{io.MultiReader(strings.NewReader(small[:17]), strings.NewReader(small[17:]))}
			}, false, redacted, payloadHashOf([]byte(redacted))},
			{"expect 100-continue", func() io.Reader { return strings.NewReader(small) }, true, redacted, payloadHashOf([]byte(redacted))},
			{"streamed past the prebuffer", func() io.Reader { return chunked{strings.NewReader(big)} }, false, bigRedacted, secrets.UnsignedPayload},
		} {
			n := len(up.all())
			req, _ := http.NewRequest("PUT", base+"/bucket/obj", tc.body())
			req.Header.Set("Content-Type", "application/json")
			if tc.expect {
				req.Header.Set("Expect", "100-continue")
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatalf("h2=%v %s: %v", h2, tc.name, err)
			}
			got := readAll(t, resp)
			seen := up.all()
			if len(seen) != n+1 {
				t.Fatalf("h2=%v %s: upstream saw %d requests, want 1 (answer %d %q)", h2, tc.name, len(seen)-n, resp.StatusCode, got)
			}
			last := seen[n]
			if last.err != nil {
				t.Errorf("h2=%v %s: signature check failed: %v", h2, tc.name, last.err)
			}
			if last.body != tc.want {
				t.Errorf("h2=%v %s: upstream saw a body of %d bytes (SSN present: %v), want the redacted %d bytes", h2, tc.name, len(last.body), strings.Contains(last.body, ssn), len(tc.want))
			}
			if last.hash != tc.wantHash {
				t.Errorf("h2=%v %s: payload hash %q, want %q", h2, tc.name, last.hash, tc.wantHash)
			}
			if resp.StatusCode != http.StatusOK {
				t.Errorf("h2=%v %s: %d %q", h2, tc.name, resp.StatusCode, got)
			}
		}
	}
	for _, ev := range e.rec.waitKind(t, audit.KindHTTP, 8) {
		if ev.Decision != audit.DecisionAllow || ev.Redacted[`\b\d{3}-\d{2}-\d{4}\b`] != 1 {
			t.Errorf("http event %+v", ev)
		}
	}
}

// TestShapingRefusalBeforeCredentials (#20, #22): a body refused by
// max_body or deny_body is answered before any secret is looked up or
// anything signed, and the upstream sees nothing. (A body longer than
// policy.PrebufferBody is streamed: its refusal comes while forwarding.)
func TestShapingRefusalBeforeCredentials(t *testing.T) {
	t.Parallel()
	e, up, store, signer, base := signShapeEnv(t, "64KiB")
	pem := "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n"
	for _, h2 := range []bool{false, true} {
		c := e.client(h2)
		for _, tc := range []struct {
			name string
			body func() io.Reader
			want int
		}{
			{"over max_body by length", func() io.Reader { return bytes.NewReader(make([]byte, 64<<10+1)) }, http.StatusRequestEntityTooLarge},
			{"over max_body chunked", func() io.Reader { return chunked{bytes.NewReader(make([]byte, 64<<10+1))} }, http.StatusRequestEntityTooLarge},
			{"private key", func() io.Reader { return strings.NewReader("upload " + pem) }, http.StatusForbidden},
			{"private key chunked", func() io.Reader { return chunked{strings.NewReader("upload " + pem)} }, http.StatusForbidden},
		} {
			req, _ := http.NewRequest("PUT", base+"/bucket/obj", tc.body())
			resp, err := c.Do(req)
			if err != nil {
				// The proxy may close the connection before the
				// client finished sending: the audit event decides.
				t.Logf("h2=%v %s: %v", h2, tc.name, err)
			} else {
				got := readAll(t, resp)
				if resp.StatusCode != tc.want {
					t.Errorf("h2=%v %s: %d %q, want %d", h2, tc.name, resp.StatusCode, got, tc.want)
				}
			}
			if n := store.n.Load(); n != 0 {
				t.Errorf("h2=%v %s: %d secret lookups before the refusal", h2, tc.name, n)
			}
			if n := signer.n.Load(); n != 0 {
				t.Errorf("h2=%v %s: %d signatures before the refusal", h2, tc.name, n)
			}
		}
	}
	evs := e.rec.waitKind(t, audit.KindHTTP, 8)
	for _, ev := range evs {
		if ev.Decision != audit.DecisionDeny || ev.Rule != "s3" || len(ev.Injected) != 0 {
			t.Errorf("http event %+v", ev)
		}
	}
	if len(evs) != 8 {
		t.Errorf("%d http events, want 8", len(evs))
	}
	if seen := up.all(); len(seen) != 0 {
		t.Errorf("upstream saw %d requests", len(seen))
	}
}
