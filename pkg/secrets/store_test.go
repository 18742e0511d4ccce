package secrets

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// canary is a distinctive value that must never appear outside the store.
const canary = "sk-CANARY-9f83b1e2d4c7a6"

func testLogger(t *testing.T, buf *bytes.Buffer) *slog.Logger {
	t.Helper()
	if buf == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// noLeak fails when s contains any of the values.
func noLeak(t *testing.T, what, s string, values ...string) {
	t.Helper()
	for _, v := range values {
		if v != "" && strings.Contains(s, v) {
			t.Errorf("%s leaks a secret value: %q", what, s)
		}
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func openTestStore(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := OpenStore(dir, KeySource{}, testLogger(t, nil))
	if err != nil {
		t.Fatalf("OpenStore: %v", err)
	}
	return s
}

func TestStoreRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, dir)
	if err := s.Set(Global, "OPENAI_API_KEY", canary); err != nil {
		t.Fatal(err)
	}
	if err := s.Set(SandboxScope("ci-1"), "OPENAI_API_KEY", canary+"-sandbox"); err != nil {
		t.Fatal(err)
	}
	// A second process (fresh Store, same dir) reads the same values.
	s2 := openTestStore(t, dir)
	for _, tc := range []struct {
		scope Scope
		want  string
	}{{Global, canary}, {SandboxScope("ci-1"), canary + "-sandbox"}} {
		got, err := s2.Get(tc.scope, "OPENAI_API_KEY")
		if err != nil || got != tc.want {
			t.Fatalf("Get(%s) = %q, %v; want the stored value", tc.scope, got, err)
		}
	}
	_, err := s2.Get(SandboxScope("other"), "OPENAI_API_KEY")
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(other) err = %v, want ErrNotFound", err)
	}
	if !strings.Contains(err.Error(), "OPENAI_API_KEY") {
		t.Errorf("not-found error %q does not name the secret", err)
	}
	noLeak(t, "error", errText(err), canary)

	entries, err := s2.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 || entries[0].Scope != Global || entries[1].Scope != "ci-1" || entries[0].Updated.IsZero() {
		t.Fatalf("List = %+v", entries)
	}
	js, _ := json.Marshal(entries)
	noLeak(t, "List JSON", string(js), canary)
	if !strings.Contains(string(js), `"scope":"sandbox","sandbox":"ci-1"`) {
		t.Errorf("List JSON = %s", js)
	}

	// Rotation: a write by another Store is seen by s without reopening.
	if err := s2.Set(Global, "OPENAI_API_KEY", "rotated-value"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Get(Global, "OPENAI_API_KEY"); got != "rotated-value" {
		t.Fatalf("after rotation Get = %q", got)
	}
	if err := s.Delete(Global, "OPENAI_API_KEY"); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Get(Global, "OPENAI_API_KEY"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after Delete: %v", err)
	}
	if err := s.Delete(Global, "OPENAI_API_KEY"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Delete: %v", err)
	}
}

func TestStoreWrongKey(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, dir)
	if err := s.Set(Global, "TOKEN", canary); err != nil {
		t.Fatal(err)
	}
	other := make([]byte, 32)
	rand.Read(other)
	getenv := func(string) string { return base64.StdEncoding.EncodeToString(other) }
	_, err := OpenStore(dir, KeySource{Env: "SLUICE_KEY", Getenv: getenv}, testLogger(t, nil))
	if !errors.Is(err, ErrWrongKey) {
		t.Fatalf("OpenStore with another key: err = %v, want ErrWrongKey", err)
	}
	noLeak(t, "error", errText(err), canary, "TOKEN")

	// Same key check but corrupted ciphertext: still a clear error.
	raw, _ := os.ReadFile(filepath.Join(dir, StoreFile))
	raw[len(raw)-1] ^= 1
	os.WriteFile(filepath.Join(dir, StoreFile), raw, 0o600)
	_, err = OpenStore(dir, KeySource{}, testLogger(t, nil))
	if err == nil || !strings.Contains(err.Error(), "decryption failed") {
		t.Fatalf("corrupted store: err = %v", err)
	}
	noLeak(t, "error", errText(err), canary)
}

func TestStoreOnDiskHasNoPlaintextAnd0600(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := openTestStore(t, dir)
	if err := s.Set(SandboxScope("box"), "GITHUB_TOKEN", canary); err != nil {
		t.Fatal(err)
	}
	if err := s.PutOpaque(OpaqueRef{Sandbox: "box", Rule: "r", Header: "x-api-key"}, canary+"-opaque"); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	seen := map[string]bool{}
	for _, e := range ents {
		seen[e.Name()] = true
		p := filepath.Join(dir, e.Name())
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm != 0o600 {
			t.Errorf("%s has mode %04o, want 0600", e.Name(), perm)
		}
		b, _ := os.ReadFile(p)
		for _, needle := range []string{canary, "GITHUB_TOKEN", "x-api-key", "X-Api-Key"} {
			if bytes.Contains(b, []byte(needle)) {
				t.Errorf("%s contains plaintext %q", e.Name(), needle)
			}
		}
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temp file %s left behind", e.Name())
		}
	}
	if ok, err := StoreExists(dir); !ok || err != nil {
		t.Fatalf("StoreExists = %v, %v", ok, err)
	}
	if ok, _ := StoreExists(t.TempDir()); ok {
		t.Fatal("StoreExists true for an empty dir")
	}
	if !seen[StoreFile] || !seen[KeyFile] {
		t.Fatalf("state dir has %v, want %s and %s", seen, StoreFile, KeyFile)
	}
	fi, _ := os.Stat(dir)
	if fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("state dir mode %04o", fi.Mode().Perm())
	}
}

func TestStoreKeySources(t *testing.T) {
	key := make([]byte, 32)
	rand.Read(key)
	b64 := base64.StdEncoding.EncodeToString(key)
	dir := t.TempDir()
	keyPath := filepath.Join(dir, "k")
	os.WriteFile(keyPath, []byte(b64+"\n"), 0o600)
	loose := filepath.Join(dir, "loose")
	os.WriteFile(loose, []byte(b64), 0o644)
	rawPath := filepath.Join(dir, "raw")
	os.WriteFile(rawPath, key, 0o400)
	short := filepath.Join(dir, "short")
	os.WriteFile(short, []byte("abc"), 0o600)
	env := func(v string) func(string) string { return func(string) string { return v } }

	tests := []struct {
		name    string
		ks      KeySource
		wantErr string
	}{
		{"file base64", KeySource{File: keyPath}, ""},
		{"file raw", KeySource{File: rawPath}, ""},
		{"env", KeySource{Env: "K", Getenv: env(b64)}, ""},
		{"group readable file", KeySource{File: loose}, "chmod 600"},
		{"short file", KeySource{File: short}, "32 bytes"},
		{"missing file", KeySource{File: filepath.Join(dir, "nope")}, "no such file"},
		{"env unset", KeySource{Env: "K", Getenv: env("")}, "empty or unset"},
		{"env not base64", KeySource{Env: "K", Getenv: env("!!" + canary)}, "base64"},
		{"both", KeySource{File: keyPath, Env: "K"}, "not both"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := OpenStore(filepath.Join(t.TempDir(), "state"), tc.ks, testLogger(t, nil))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if err := s.Set(Global, "A", canary); err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
			noLeak(t, "error", err.Error(), canary)
		})
	}
	// A key given by file and by env decrypt each other's store.
	d := t.TempDir()
	a, _ := OpenStore(d, KeySource{File: keyPath}, testLogger(t, nil))
	if err := a.Set(Global, "X", canary); err != nil {
		t.Fatal(err)
	}
	b, err := OpenStore(d, KeySource{Env: "K", Getenv: env(b64)}, testLogger(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := b.Get(Global, "X"); v != canary {
		t.Fatal("env key did not decrypt the file key's store")
	}
}

func TestStoreValidation(t *testing.T) {
	s := openTestStore(t, t.TempDir())
	tests := []struct {
		name    string
		scope   Scope
		key     string
		value   string
		wantErr string
	}{
		{"ok", Global, "A_b.c-1", canary, ""},
		{"empty name", Global, "", canary, "invalid secret name"},
		{"slash", Global, "a/b", canary, "invalid secret name"},
		{"leading dot", Global, ".x", canary, "invalid secret name"},
		{"space", Global, "a b", canary, "invalid secret name"},
		{"empty value", Global, "A", "", "empty value"},
		{"control char sandbox", Scope("a\nb"), "A", canary, "control characters"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := s.Set(tc.scope, tc.key, tc.value)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
			noLeak(t, "error", err.Error(), canary)
		})
	}
}

func TestStoreConcurrentWriters(t *testing.T) {
	dir := t.TempDir()
	a, b := openTestStore(t, dir), openTestStore(t, dir)
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(2)
		go func() { defer wg.Done(); a.Set(Global, "A"+string(rune('a'+i)), "v") }()
		go func() { defer wg.Done(); b.Set(Global, "B"+string(rune('a'+i)), "v") }()
	}
	wg.Wait()
	ents, err := openTestStore(t, dir).List()
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 40 {
		t.Fatalf("got %d entries, want 40 (lost updates)", len(ents))
	}
}

func TestOpaque(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, dir)
	ref := OpaqueRef{Sandbox: "box", Rule: "corp", Header: "x-api-key"}
	if err := s.PutOpaque(ref, canary); err != nil {
		t.Fatal(err)
	}
	s2 := openTestStore(t, dir)
	got, err := s2.Opaque(OpaqueRef{Sandbox: "box", Rule: "corp", Header: "X-Api-Key"})
	if err != nil || got != canary {
		t.Fatalf("Opaque = %q, %v", got, err)
	}
	refs, _ := s2.ListOpaque()
	if len(refs) != 1 || refs[0].String() != "box/corp/X-Api-Key" {
		t.Fatalf("ListOpaque = %v", refs)
	}
	// Opaque values are not named secrets.
	if ents, _ := s2.List(); len(ents) != 0 {
		t.Fatalf("List shows opaque values: %v", ents)
	}
	_, err = s2.Opaque(OpaqueRef{Sandbox: "other", Rule: "corp", Header: "x-api-key"})
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v", err)
	}
	if n, err := s2.DeleteOpaque("box"); n != 1 || err != nil {
		t.Fatalf("DeleteOpaque = %d, %v", n, err)
	}
	if _, err := s.Opaque(ref); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if err := s.PutOpaque(OpaqueRef{Rule: "r", Header: "h"}, canary); err == nil {
		t.Fatal("opaque without sandbox accepted")
	} else {
		noLeak(t, "error", err.Error(), canary)
	}
}

func TestStoreKeyMissingIsNotReplaced(t *testing.T) {
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := OpenStore(dir, KeySource{}, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Set(Global, "TOKEN", "v"); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, KeyFile)); err != nil {
		t.Fatal(err)
	}
	_, err = OpenStore(dir, KeySource{}, log)
	if err == nil || !strings.Contains(err.Error(), "is missing but the store") {
		t.Fatalf("open without the key: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, KeyFile)); !os.IsNotExist(err) {
		t.Fatalf("a new key file was created over the store: %v", err)
	}
}
