package main

import (
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/secrets"
)

func TestCallbackKey(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	pemOut := runCLI(t, "", "callback-key", "--state-dir", state)
	if pemOut.code != 0 || !strings.HasPrefix(pemOut.stdout, "-----BEGIN PUBLIC KEY-----") {
		t.Fatalf("PEM: %+v", pemOut)
	}
	fi, err := os.Stat(filepath.Join(state, secrets.SigningKeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("signing key file: %v %v", fi, err)
	}
	jwkOut := runCLI(t, "", "callback-key", "--jwk", "--state-dir", state)
	if jwkOut.code != 0 || !strings.Contains(jwkOut.stdout, `"kty":"OKP"`) || !strings.Contains(jwkOut.stdout, `"crv":"Ed25519"`) {
		t.Fatalf("JWK: %+v", jwkOut)
	}
	fromPEM, err := secrets.ParsePublicKeyPEM([]byte(pemOut.stdout))
	if err != nil {
		t.Fatal(err)
	}
	fromJWK, err := secrets.ParseJWK([]byte(jwkOut.stdout))
	if err != nil {
		t.Fatal(err)
	}
	if !fromPEM.Equal(fromJWK) {
		t.Fatal("PEM and JWK print different keys")
	}
	// The printed key verifies what the daemon's key signs, and a second
	// run prints the same key.
	priv, err := secrets.LoadOrCreateSigningKey(state)
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"sandbox":"a","host":"h","port":443}`)
	if err := secrets.Verify(fromPEM, secrets.Sign(priv, body, time.Now()), body, time.Minute); err != nil {
		t.Fatal(err)
	}
	if again := runCLI(t, "", "callback-key", "--state-dir", state); again.stdout != pemOut.stdout {
		t.Fatal("key changed between runs")
	}
	if priv.Public().(ed25519.PublicKey).Equal(fromPEM) == false {
		t.Fatal("mismatch")
	}
	// A private key readable by others is refused.
	os.Chmod(filepath.Join(state, secrets.SigningKeyFile), 0o644)
	if r := runCLI(t, "", "callback-key", "--state-dir", state); r.code == 0 || !strings.Contains(r.stderr, "chmod 600") {
		t.Fatalf("loose key accepted: %+v", r)
	}
}

// TestCallbackKeyVerify: `sluice callback-key verify` accepts a signature
// over the body with the printed key (PEM or JWK) and refuses a changed body.
func TestCallbackKeyVerify(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	pemOut := runCLI(t, "", "callback-key", "--state-dir", state)
	jwkOut := runCLI(t, "", "callback-key", "--jwk", "--state-dir", state)
	pemFile, jwkFile, bodyFile := filepath.Join(dir, "k.pem"), filepath.Join(dir, "k.jwk"), filepath.Join(dir, "body.json")
	os.WriteFile(pemFile, []byte(pemOut.stdout), 0o644)
	os.WriteFile(jwkFile, []byte(jwkOut.stdout), 0o644)
	priv, err := secrets.LoadOrCreateSigningKey(state)
	if err != nil {
		t.Fatal(err)
	}
	body := `{"sandbox":"a","host":"h","port":443,"labels":{"user":"alice"}}`
	os.WriteFile(bodyFile, []byte(body), 0o644)
	sig := secrets.Sign(priv, []byte(body), time.Now())
	for _, key := range []string{pemFile, jwkFile} {
		if r := runCLI(t, "", "callback-key", "verify", "--key", key, "--signature", sig, "--body", bodyFile); r.code != 0 || !strings.Contains(r.stdout, "signature valid") {
			t.Fatalf("%s: %+v", key, r)
		}
	}
	if r := runCLI(t, body+" ", "callback-key", "verify", "--key", pemFile, "--signature", sig); r.code == 0 || !strings.Contains(r.stderr, "no valid ed25519 signature") {
		t.Fatalf("changed body accepted: %+v", r)
	}
}
