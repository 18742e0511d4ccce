package secrets

import (
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSignVerify(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	otherPub, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	body := []byte(`{"sandbox":"box","host":"api.corp.internal","port":443}`)
	now := time.Unix(1_800_000_000, 0)
	good := Sign(priv, body, now)
	if !strings.HasPrefix(good, "t=1800000000,ed25519=") {
		t.Fatalf("header format: %q", good)
	}
	_, sig, _ := strings.Cut(good, ",ed25519=")
	tests := []struct {
		name    string
		pub     ed25519.PublicKey
		header  string
		body    []byte
		at      time.Time
		wantErr string
	}{
		{"ok", pub, good, body, now, ""},
		{"ok within skew", pub, good, body, now.Add(4 * time.Minute), ""},
		{"rotation: two signatures, one valid", pub, Sign(otherPriv, body, now) + ",ed25519=" + sig, body, now, ""},
		{"unknown fields ignored", pub, "v=2," + good, body, now, ""},
		{"other key", otherPub, good, body, now, "no valid ed25519 signature"},
		{"body changed", pub, good, append([]byte(nil), append(body, ' ')...), now, "no valid ed25519 signature"},
		{"timestamp changed", pub, strings.Replace(good, "t=1800000000", "t=1800000001", 1), body, now, "no valid ed25519 signature"},
		{"too old", pub, good, body, now.Add(6 * time.Minute), "more than 5m0s"},
		{"from the future", pub, good, body, now.Add(-6 * time.Minute), "more than 5m0s"},
		{"no t", pub, "ed25519=" + sig, body, now, "lacks t="},
		{"no sig", pub, "t=1800000000", body, now, "lacks t="},
		{"bad base64", pub, "t=1800000000,ed25519=!!", body, now, "not a base64"},
		{"garbage", pub, "hello", body, now, "malformed header"},
		{"non-decimal t", pub, "t=+1800000000,ed25519=" + sig, body, now, "not a decimal"},
		{"duplicate t", pub, "t=1,t=2,ed25519=" + sig, body, now, "twice"},
		{"bad pub", ed25519.PublicKey{1, 2}, good, body, now, "not an Ed25519"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := VerifyAt(tc.pub, tc.header, tc.body, 5*time.Minute, tc.at)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestSigningKeyFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	k1, err := LoadOrCreateSigningKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := LoadOrCreateSigningKey(dir)
	if err != nil || !k1.Equal(k2) {
		t.Fatalf("second load: %v", err)
	}
	p := filepath.Join(dir, SigningKeyFile)
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %04o", fi.Mode().Perm())
	}
	pub := k1.Public().(ed25519.PublicKey)
	pemb, _ := PublicKeyPEM(pub)
	jwk, _ := PublicKeyJWK(pub)
	if p2, err := ParsePublicKeyPEM(pemb); err != nil || !p2.Equal(pub) {
		t.Fatalf("PEM round trip: %v", err)
	}
	if p3, err := ParseJWK(jwk); err != nil || !p3.Equal(pub) || !strings.Contains(string(jwk), `"kid":"`+KeyID(pub)+`"`) {
		t.Fatalf("JWK round trip: %v %s", err, jwk)
	}
	os.WriteFile(p, []byte("not a key"), 0o600)
	if _, err := LoadOrCreateSigningKey(dir); err == nil || !strings.Contains(err.Error(), "not a PEM private key") {
		t.Fatalf("garbage key: %v", err)
	}
}
