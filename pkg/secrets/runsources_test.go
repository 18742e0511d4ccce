package secrets

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseSecretsFile(t *testing.T) {
	tests := []struct {
		name    string
		content string
		mode    os.FileMode
		want    map[string]string
		wantErr string
	}{
		{"ok", "# comment\n\nA=" + canary + "\nexport B = x=y \r\n  C=with spaces \n", 0o600,
			map[string]string{"A": canary, "B": " x=y ", "C": "with spaces "}, ""},
		{"0400 ok", "A=1\n", 0o400, map[string]string{"A": "1"}, ""},
		{"group readable", "A=" + canary + "\n", 0o640, nil, "mode 0640; it must not be accessible by group or others: run `chmod 600"},
		{"world readable", "A=1\n", 0o644, nil, "chmod 600"},
		{"no equals", "A=1\n" + canary + "\n", 0o600, nil, ":2: expected NAME=value"},
		{"bad name", "A B=" + canary + "\n", 0o600, nil, ":1: expected NAME=value"},
		{"duplicate", "A=" + canary + "\nA=2\n", 0o600, nil, ":2: the name of line 1 is set again"},
		{"empty value", "A=\n", 0o600, nil, ":1: empty value"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "secrets.env")
			if err := os.WriteFile(p, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			os.Chmod(p, tc.mode)
			got, err := ParseSecretsFile(p)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				noLeak(t, "error", err.Error(), canary)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
	if _, err := ParseSecretsFile(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Fatal("missing file accepted")
	}
}

func TestFromEnv(t *testing.T) {
	environ := []string{"PATH=/bin", "API_KEY=" + canary, "HOME=/root", "OTHER=" + canary + "2", "MALFORMED", "API_KEY_2=x"}
	lookup := func(k string) (string, bool) {
		for _, kv := range environ {
			if n, v, ok := strings.Cut(kv, "="); ok && n == k {
				return v, true
			}
		}
		return "", false
	}
	m, err := FromEnv([]string{"API_KEY", "OTHER"}, lookup)
	if err != nil || m["API_KEY"] != canary || m["OTHER"] != canary+"2" {
		t.Fatalf("FromEnv = %v, %v", m, err)
	}
	_, err = FromEnv([]string{"API_KEY", "UNSET"}, lookup)
	if err == nil || !strings.Contains(err.Error(), "UNSET is unset") {
		t.Fatalf("err = %v", err)
	}
	noLeak(t, "error", err.Error(), canary)
}
