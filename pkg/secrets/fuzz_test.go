package secrets

import (
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// FuzzVerify: arbitrary headers never panic and never verify without the
// signing key.
func FuzzVerify(f *testing.F) {
	seed := ed25519.NewKeyFromSeed(make([]byte, 32))
	pub := seed.Public().(ed25519.PublicKey)
	now := time.Unix(1_800_000_000, 0)
	body := []byte(`{"sandbox":"a","host":"h","port":1}`)
	f.Add(Sign(seed, body, now), body)
	f.Add("t=1800000000,ed25519=", body)
	f.Add("t=,ed25519=,,=", []byte{})
	f.Add("ed25519=AAAA,t=1800000000,x=y", body)
	f.Fuzz(func(t *testing.T, header string, b []byte) {
		err := VerifyAt(pub, header, b, time.Minute, now)
		_, genuine, _ := strings.Cut(Sign(seed, b, now), ",")
		if err == nil && !strings.Contains(header, genuine) {
			// A valid header must carry the genuine signature for b.
			t.Fatalf("verified a forged header %q", header)
		}
	})
}

// FuzzParseSecretsFile: errors never quote the file's content.
func FuzzParseSecretsFile(f *testing.F) {
	f.Add("A=1\nB=2\n")
	f.Add("# c\nexport X= y\r\n")
	f.Add("no-equals-" + canary + "\n")
	f.Add("A B=" + canary)
	f.Fuzz(func(t *testing.T, content string) {
		p := filepath.Join(t.TempDir(), "s")
		if err := os.WriteFile(p, []byte(content+"\n"+canary+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := ParseSecretsFile(p)
		if err == nil {
			t.Fatal("a line without = was accepted")
		}
		if strings.Contains(err.Error(), canary) {
			t.Fatalf("error quotes content: %v", err)
		}
	})
}
