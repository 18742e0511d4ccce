package main

import (
	"os"
	"strings"
	"testing"
)

// The worked example of `sluice policy suggest` (README, "Writing a policy
// from what ran"): testdata/audit/audit-run.jsonl is the log of a workload
// run under mode: audit; testdata/policies/suggested-from-audit.yaml is what
// `sluice policy suggest --from testdata/audit/audit-run.jsonl --sandbox
// agent1` writes for it.
const (
	suggestExampleLog    = "../../testdata/audit/audit-run.jsonl"
	suggestExamplePolicy = policiesDir + "/suggested-from-audit.yaml"
)

func init() {
	// Checked by TestPolicyExplainGolden like every example policy.
	explainCases["suggested-from-audit.yaml"] = []struct {
		method, url string
		json        bool
		wantCode    int
	}{
		{"GET", "https://api.example.com/v1/items/7", false, 0},
		{"POST", "https://api.example.com/v1/upload", false, 0},
		{"DELETE", "https://api.example.com/v1/items/7", false, 3},
		{"GET", "https://api.example.com/v1/admin", false, 3},
		{"GET", "https://git.example.com/acme/app.git/info/refs", false, 0},
		{"GET", "https://pypi.org/simple/requests/", false, 0},
		{"GET", "https://other.example.net/", false, 3},
	}
}

// TestPolicySuggestExample: the example policy is exactly what `sluice
// policy suggest` writes for the example log (rewrite with -update after
// checking), and policy check accepts it.
func TestPolicySuggestExample(t *testing.T) {
	code, out, errs := runSluice(t, "policy", "suggest", "--from", suggestExampleLog, "--sandbox", "agent1")
	if code != 0 || !strings.Contains(errs, "suggested 3 rules from 16 events (2 skipped); replayed 16 recorded decisions: all allowed") {
		t.Fatalf("policy suggest: exit %d\n%s%s", code, out, errs)
	}
	// The header names the log as given on the command line: as from the
	// repository's root.
	out = strings.Replace(out, suggestExampleLog, "testdata/audit/audit-run.jsonl", 1)
	if *updateGolden {
		if err := os.WriteFile(suggestExamplePolicy, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(suggestExamplePolicy)
	if err != nil {
		t.Fatal(err)
	}
	if out != string(want) {
		t.Errorf("policy suggest output differs from %s (run with -update after checking):\n%s", suggestExamplePolicy, out)
	}
	for _, w := range []string{`processes: ["/usr/bin/node"]`, `"/v1/items/*"`, `processes: ["/usr/lib/git-core/git-remote-http"]`} {
		if !strings.Contains(out, w) {
			t.Errorf("the suggestion lacks %s", w)
		}
	}
	if strings.Contains(out, "other.example.net") {
		t.Error("the suggestion allows a host of another sandbox")
	}
	if code, out, errs := runSluice(t, "policy", "check", suggestExamplePolicy); code != 0 || errs != "" {
		t.Fatalf("policy check: exit %d\n%s%s", code, out, errs)
	}
}
