package main

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-dev/sluice/pkg/secrets"
)

const cliCanary = "ghp_CLICANARY_5d1e8a0f7b"

type cliResult struct {
	code           int
	stdout, stderr string
}

func runCLI(t *testing.T, stdin string, args ...string) cliResult {
	t.Helper()
	var out, errb bytes.Buffer
	code := execute(args, strings.NewReader(stdin), &out, &errb)
	r := cliResult{code, out.String(), errb.String()}
	for _, s := range []string{r.stdout, r.stderr} {
		if strings.Contains(s, cliCanary) {
			t.Errorf("sluice %v output leaks the secret value:\n%s", args, s)
		}
	}
	return r
}

func TestSecretSetListRm(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	valFile := filepath.Join(t.TempDir(), "v")
	os.WriteFile(valFile, []byte(cliCanary+"-file\n"), 0o600)

	steps := []struct {
		name       string
		stdin      string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{"set global from stdin", cliCanary + "\n", []string{"secret", "set", "GITHUB_TOKEN"}, 0, "secret GITHUB_TOKEN set (global)", ""},
		{"set sandbox from file", "", []string{"secret", "set", "GITHUB_TOKEN", "--sandbox", "ci-42", "--from-file", valFile}, 0, "secret GITHUB_TOKEN set (sandbox:ci-42)", ""},
		{"value as argument refused, not echoed", "", []string{"secret", "set", "X", cliCanary}, 1, "", "never taken from the command line"},
		{"empty stdin", "", []string{"secret", "set", "X"}, 1, "", "empty secret value from stdin"},
		{"bad name", "v", []string{"secret", "set", "a/b"}, 1, "", "invalid secret name"},
		{"missing file", "", []string{"secret", "set", "X", "--from-file", filepath.Join(state, "nope")}, 1, "", "no such file"},
		{"list", "", []string{"secret", "list"}, 0, "GITHUB_TOKEN  global", ""},
		{"rm sandbox", "", []string{"secret", "rm", "GITHUB_TOKEN", "--sandbox", "ci-42"}, 0, "secret GITHUB_TOKEN removed (sandbox:ci-42)", ""},
		{"rm again", "", []string{"secret", "rm", "GITHUB_TOKEN", "--sandbox", "ci-42"}, 1, "", "secret not found"},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			r := runCLI(t, st.stdin, append(st.args, "--state-dir", state)...)
			if r.code != st.wantCode || !strings.Contains(r.stdout, st.wantStdout) || !strings.Contains(r.stderr, st.wantStderr) {
				t.Fatalf("code %d, stdout %q, stderr %q; want code %d, stdout ~ %q, stderr ~ %q",
					r.code, r.stdout, r.stderr, st.wantCode, st.wantStdout, st.wantStderr)
			}
		})
	}

	// The values reached the store (trailing newline removed) and nothing
	// in the state dir but the encrypted store holds them.
	s, err := secrets.OpenStore(state, secrets.KeySource{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if v, err := s.Get(secrets.Global, "GITHUB_TOKEN"); err != nil || v != cliCanary {
		t.Fatalf("stored global value wrong (err %v)", err)
	}
	files, _ := os.ReadDir(state)
	for _, f := range files {
		b, _ := os.ReadFile(filepath.Join(state, f.Name()))
		if bytes.Contains(b, []byte(cliCanary)) {
			t.Errorf("%s contains the plaintext value", f.Name())
		}
	}
}

func TestSecretListJSONAndRotation(t *testing.T) {
	state := t.TempDir()
	if r := runCLI(t, "", "secret", "list", "--json", "--state-dir", state); r.code != 0 || strings.TrimSpace(r.stdout) != "[]" {
		t.Fatalf("empty list: %+v", r)
	}
	if _, err := os.Stat(filepath.Join(state, secrets.KeyFile)); err == nil {
		t.Fatal("list created a key")
	}
	runCLI(t, cliCanary, "secret", "set", "API", "--sandbox", "box", "--state-dir", state)
	r := runCLI(t, "", "secret", "list", "--json", "--state-dir", state)
	var got []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("list --json: %v\n%s", err, r.stdout)
	}
	if len(got) != 1 || got[0]["name"] != "API" || got[0]["scope"] != "sandbox" || got[0]["sandbox"] != "box" || got[0]["updated"] == "" {
		t.Fatalf("list --json = %v", got)
	}
	// A daemon-side Store sees a rotation done by the CLI on its next Get.
	s, err := secrets.OpenStore(state, secrets.KeySource{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	chain := secrets.NewChain(s)
	if v, _ := chain.Lookup(t.Context(), "box", "API"); v != cliCanary {
		t.Fatal("chain did not resolve the stored value")
	}
	runCLI(t, cliCanary+"-rotated", "secret", "set", "API", "--sandbox", "box", "--state-dir", state)
	if v, _ := chain.Lookup(t.Context(), "box", "API"); v != cliCanary+"-rotated" {
		t.Fatal("rotation not visible on the next lookup")
	}
}

func TestSecretHelpHasExamples(t *testing.T) {
	for _, args := range [][]string{{"secret", "--help"}, {"secret", "set", "--help"}, {"secret", "list", "--help"}, {"secret", "rm", "--help"}, {"callback-key", "--help"}} {
		r := runCLI(t, "", args...)
		if r.code != 0 || !strings.Contains(r.stdout, "Examples:") {
			t.Errorf("%v: code %d, no Examples in %q", args, r.code, r.stdout)
		}
	}
}
