package secrets

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestChainLookup(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t, t.TempDir())
	s.Set(SandboxScope("box"), "SCOPED", "store-box")
	s.Set(Global, "SCOPED", "store-global")
	s.Set(Global, "ONLY_GLOBAL", "store-global-2")
	env := Env{Getenv: func(k string) (string, bool) {
		m := map[string]string{"FROM_ENV": "env-value", "SCOPED": "env-global"}
		v, ok := m[k]
		return v, ok
	}}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "FROM_FILE"), []byte("file-value\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "FROM_ENV"), []byte("file-shadowed"), 0o600)
	c := NewChain(s, env, Dir{Path: dir}, Static{"STATIC": canary})

	tests := []struct {
		name    string
		sandbox string
		secret  string
		want    string
		wantErr string
	}{
		{"sandbox scope wins", "box", "SCOPED", "store-box", ""},
		{"global for other sandbox (store before env)", "other", "SCOPED", "store-global", ""},
		{"global without sandbox", "", "SCOPED", "store-global", ""},
		{"fallback to global", "box", "ONLY_GLOBAL", "store-global-2", ""},
		{"env", "box", "FROM_ENV", "env-value", ""},
		{"file, newline trimmed", "box", "FROM_FILE", "file-value", ""},
		{"static", "box", "STATIC", canary, ""},
		{"missing names secret and sandbox", "box", "NOPE", "", `secret NOPE is not set for sandbox "box"`},
		{"missing global", "", "NOPE", "", "secret NOPE is not set (global scope)"},
		{"invalid name", "box", "../etc/passwd", "", "invalid secret name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := c.Lookup(ctx, tc.sandbox, tc.secret)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				if strings.Contains(tc.wantErr, "not set") && !errors.Is(err, ErrNotFound) {
					t.Errorf("err does not wrap ErrNotFound")
				}
				noLeak(t, "error", err.Error(), canary, "store-box", "store-global", "env-value")
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Lookup = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	// Rotation through the chain: the next lookup sees the new value.
	s2 := openTestStore(t, filepath.Dir(s.Path()))
	s2.Set(SandboxScope("box"), "SCOPED", "rotated")
	if v, _ := c.Lookup(ctx, "box", "SCOPED"); v != "rotated" {
		t.Fatalf("after rotation got %q", v)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.Lookup(cctx, "box", "SCOPED"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled ctx: %v", err)
	}
}

type failingProvider struct{}

func (failingProvider) Secret(context.Context, Scope, string) (string, error) {
	return "", errors.New("backend unavailable")
}

func TestChainFailsClosedOnProviderError(t *testing.T) {
	c := NewChain(failingProvider{}, Static{"A": canary})
	_, err := c.Lookup(context.Background(), "box", "A")
	if err == nil || !strings.Contains(err.Error(), "backend unavailable") || errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v", err)
	}
}

func TestDirProvider(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "OK"), []byte(canary+"\r\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "EMPTY"), nil, 0o600)
	os.WriteFile(filepath.Join(filepath.Dir(dir), "outside"), []byte(canary), 0o600)
	os.Mkdir(filepath.Join(dir, "sub"), 0o700)
	d := Dir{Path: dir}
	tests := []struct {
		name, secret string
		scope        Scope
		want         string
		wantErr      string
	}{
		{"ok", "OK", Global, canary, ""},
		{"sandbox scope not served", "OK", "box", "", "secret not found"},
		{"dotdot", "..", Global, "", "not allowed"},
		{"dotdot in name", "a..b", Global, "", "not allowed"},
		{"traversal", "../outside", Global, "", "not allowed"},
		{"slash", "sub/x", Global, "", "not allowed"},
		{"missing", "NOPE", Global, "", "secret not found"},
		{"empty file", "EMPTY", Global, "", "is empty"},
		{"directory", "sub", Global, "", "is a directory"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, err := d.Secret(context.Background(), tc.scope, tc.secret)
			if tc.wantErr == "" {
				if err != nil || v != tc.want {
					t.Fatalf("got %q, %v", v, err)
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

func TestEnvProviderPrefix(t *testing.T) {
	e := Env{Prefix: "SLUICE_SECRET_", Getenv: func(k string) (string, bool) {
		if k == "SLUICE_SECRET_TOKEN" {
			return canary, true
		}
		return "", false
	}}
	if v, err := e.Secret(context.Background(), Global, "TOKEN"); err != nil || v != canary {
		t.Fatalf("got %q %v", v, err)
	}
	_, err := e.Secret(context.Background(), Global, "OTHER")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "SLUICE_SECRET_OTHER") {
		t.Fatalf("err = %v", err)
	}
}

func TestParseProvider(t *testing.T) {
	s := openTestStore(t, t.TempDir())
	tests := []struct {
		spec    string
		want    Provider
		wantErr string
	}{
		{"store", s, ""},
		{"env", Env{}, ""},
		{"env:APP_", Env{Prefix: "APP_"}, ""},
		{"file:/run/secrets/", Dir{Path: "/run/secrets"}, ""},
		{"file:relative", nil, "absolute"},
		{"vault:x", nil, "expect 'store', 'env', 'env:PREFIX' or 'file:/DIR'"},
	}
	for _, tc := range tests {
		t.Run(tc.spec, func(t *testing.T) {
			p, err := ParseProvider(tc.spec, s, nil)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if e, ok := p.(Env); ok {
				e.Getenv = nil
				p = e
			}
			if !reflect.DeepEqual(p, tc.want) && p != tc.want {
				t.Fatalf("got %#v, want %#v", p, tc.want)
			}
		})
	}
	if _, err := ParseProvider("store", nil, nil); err == nil {
		t.Fatal("store without a store accepted")
	}
}
