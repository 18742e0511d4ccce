package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files under testdata/golden")

const policiesDir = "../../testdata/policies"

func runSluice(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = execute(args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func TestPolicyCheck(t *testing.T) {
	examples, err := filepath.Glob(policiesDir + "/*.yaml")
	if err != nil || len(examples) < 5 {
		t.Fatalf("examples: %v %v", examples, err)
	}
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantOut    []string
		wantErr    []string
		notWantErr []string
	}{
		{
			name:     "all examples valid",
			args:     append([]string{"policy", "check"}, examples...),
			wantCode: 0,
			wantOut:  []string{policiesDir + "/demo.yaml: ok (2 rules)", policiesDir + "/openai-github.yaml: ok (4 rules)"},
		},
		{
			name:     "errors with positions, exit 1",
			args:     []string{"policy", "check", policiesDir + "/bad/unknown_header_type.yaml"},
			wantCode: 1,
			wantErr: []string{policiesDir + `/bad/unknown_header_type.yaml:7:15: rules[0].headers[0].type: "secrt" is not one of secret, plaintext, opaque`,
				"1 of 1 policies invalid"},
		},
		{
			name:     "every file is checked",
			args:     []string{"policy", "check", policiesDir + "/bad/bad_cidr.yaml", policiesDir + "/demo.yaml", policiesDir + "/bad/duplicate_name.yaml"},
			wantCode: 1,
			wantOut:  []string{"demo.yaml: ok (2 rules)"},
			wantErr:  []string{"bad_cidr.yaml:4:13: rules[0].cidrs[0]", "duplicate_name.yaml:5:11: rules[1].name", "2 of 3 policies invalid"},
		},
		{
			name:       "warnings printed, exit 0",
			args:       []string{"policy", "check", policiesDir + "/warn/plaintext_authorization.yaml"},
			wantCode:   0,
			wantOut:    []string{"plaintext_authorization.yaml: ok (1 rules)"},
			wantErr:    []string{"plaintext_authorization.yaml:6:55: warning: rules[0].headers[0].value: plaintext Authorization value"},
			notWantErr: []string{"dXNlcjpwYXNz"},
		},
		{
			name:     "missing file",
			args:     []string{"policy", "check", policiesDir + "/nope.yaml"},
			wantCode: 1,
			wantErr:  []string{"nope.yaml: reading policy:"},
		},
		{
			name:     "no file",
			args:     []string{"policy", "check"},
			wantCode: 1,
			wantErr:  []string{"requires at least 1 arg"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := runSluice(t, tt.args...)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.wantCode, out, errs)
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(errs, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errs)
				}
			}
			for _, w := range tt.notWantErr {
				if strings.Contains(errs+out, w) {
					t.Errorf("output shows %q", w)
				}
			}
		})
	}
}

// explainCases are the documented answers for each example policy; the
// output is compared with testdata/golden/explain/<policy>.txt (rewrite
// with go test -run TestPolicyExplainGolden -update).
var explainCases = map[string][]struct {
	method, url string
	json        bool
	wantCode    int
}{
	"demo.yaml": {
		{"GET", "https://allowed.test/", false, 0},
		{"GET", "http://plain.test/index.html", false, 0},
		{"GET", "https://blocked.test/", false, 3},
		{"GET", "https://allowed.test/x?token=abc", true, 0},
	},
	"openai-github.yaml": {
		{"POST", "https://api.openai.com/v1/chat/completions", false, 0},
		{"DELETE", "https://api.openai.com/v1/files/file-1", false, 3},
		{"GET", "https://api.github.com/repos/acme/app/issues", false, 0},
		{"DELETE", "https://api.github.com/repos/acme/app", false, 3},
		{"GET", "https://api.github.com/orgs/acme", false, 3},
		{"GET", "https://objects.githubusercontent.com/release.tar.gz", false, 0},
		{"GET", "http://github.com/", false, 3},
		{"GET", "https://example.com/", false, 3},
		{"POST", "api.github.com/user", true, 0},
		{"post", "api.github.com/user", false, 3},
		{"GET", "https://api.github.com/repos/acme/app/../../orgs/acme", false, 3},
	},
	"npm-mirror.yaml": {
		{"GET", "https://registry.npmjs.org/lodash", false, 0},
		{"PUT", "https://registry.npmjs.org/lodash", false, 3},
		{"GET", "https://registry.yarnpkg.com/lodash", false, 3},
		{"GET", "https://yarnpkg.com/", false, 3},
		{"GET", "https://npm.mirror.internal:8443/lodash", false, 0},
		{"GET", "https://npm.mirror.internal/lodash", false, 3},
		{"HEAD", "https://registry.npmjs.org/react", true, 0},
	},
	"corporate-callback.yaml": {
		{"GET", "https://billing.api.corp.internal/v1/invoices", false, 0},
		{"GET", "https://api.corp.internal/admin/users", false, 3},
		{"POST", "https://metrics.corp.internal/v1/push", false, 0},
		{"GET", "https://metrics.corp.internal/v1/push", false, 3},
		{"GET", "http://10.20.1.5:5432/", false, 0},
		{"GET", "http://10.20.99.5:5432/", false, 3},
		{"GET", "https://api.corp.internal/v1/x", true, 0},
		{"GET", "https://api.corp.internal//admin/users", false, 3},
		{"GET", "https://api.corp.internal/admin;v=1/users", false, 3},
		{"GET", "https://api.corp.internal/admin/", false, 3},
		{"GET", "http://billing.api.corp.internal/v1/invoices", false, 3},
	},
	"case-folding-wiki.yaml": {
		{"GET", "https://wiki.corp.internal/Pages/Home", false, 0},
		{"GET", "https://wiki.corp.internal/PAGES/ADMIN/users", false, 3},
		{"GET", "https://wiki.corp.internal/pages/%61dmin", false, 3},
		{"GET", "https://wiki.corp.internal/pages%2Fadmin", false, 3},
		{"POST", "https://wiki.corp.internal/pages/x?_method=DELETE", true, 3},
	},
	"cloud-credentials.yaml": {
		{"GET", "https://api.corp.example/v1/items", false, 0},
		{"GET", "https://calendar.example.com/events", false, 0},
		{"GET", "https://storage.googleapis.com/bucket/object", false, 0},
		{"PUT", "https://bucket.s3.us-east-1.amazonaws.com/key", false, 0},
		{"GET", "https://auth.corp.example/token", false, 3},
		{"GET", "https://s3.us-east-1.amazonaws.com/", true, 0},
	},
	"request-shaping.yaml": {
		{"POST", "https://upload.example.com/v1/files", false, 0},
		{"POST", "https://other.example.com/v1/files", false, 3},
		{"PUT", "https://upload.example.com/v1/files", true, 0},
	},
	"dev-server-listen.yaml": {
		{"GET", "https://api.example.com/v1/x", false, 0},
		{"GET", "https://other.example.com/", false, 3},
	},
	"per-process.yaml": {
		{"GET", "https://git.example.com/acme/app.git/info/refs", false, 0},
		{"POST", "https://api.openai.com/v1/chat/completions", false, 0},
		{"GET", "https://pypi.org/simple/requests/", true, 0},
	},
	"ci-locked-down.yaml": {
		{"GET", "https://proxy.golang.org/github.com/spf13/cobra/@v/list", false, 0},
		{"POST", "https://proxy.golang.org/github.com/spf13/cobra/@v/list", false, 3},
		{"GET", "https://storage.googleapis.com/proxy-golang-org-prod/abc", false, 0},
		{"GET", "https://storage.googleapis.com/other-bucket/abc", false, 3},
		{"PUT", "https://ci-results.example.com/upload/run-42", false, 0},
		{"GET", "https://github.com/", false, 3},
		{"GET", "http://proxy.golang.org/", true, 3},
	},
}

func TestPolicyExplainGolden(t *testing.T) {
	examples, _ := filepath.Glob(policiesDir + "/*.yaml")
	for _, f := range examples {
		if _, ok := explainCases[filepath.Base(f)]; !ok {
			t.Errorf("example %s has no explain cases", f)
		}
	}
	for base, cases := range explainCases {
		t.Run(base, func(t *testing.T) {
			var got bytes.Buffer
			for _, c := range cases {
				args := []string{"policy", "explain", filepath.Join(policiesDir, base), c.method, c.url}
				if c.json {
					args = append(args, "--json")
				}
				code, out, errs := runSluice(t, args...)
				if code != c.wantCode {
					t.Errorf("%s %s: exit %d, want %d\n%s%s", c.method, c.url, code, c.wantCode, out, errs)
				}
				if errs != "" {
					t.Errorf("%s %s: stderr %q", c.method, c.url, errs)
				}
				if c.json {
					var v map[string]any
					if err := json.Unmarshal([]byte(out), &v); err != nil {
						t.Errorf("%s %s: --json output is not JSON: %v", c.method, c.url, err)
					}
				}
				fmt.Fprintf(&got, "$ sluice %s\n%sexit %d\n\n", strings.Join(append([]string{"policy", "explain", base}, args[3:]...), " "), out, code)
			}
			golden := filepath.Join("../../testdata/golden/explain", strings.TrimSuffix(base, ".yaml")+".txt")
			if *updateGolden {
				if err := os.WriteFile(golden, got.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got.String() != string(want) {
				t.Errorf("output differs from %s (run with -update after checking):\n%s", golden, got.String())
			}
		})
	}
}

// TestPolicyExplainHeaders: --header adds method override headers, which
// are checked against the rules as the proxy checks them.
func TestPolicyExplainHeaders(t *testing.T) {
	pol := policiesDir + "/openai-github.yaml"
	for _, tt := range []struct {
		args     []string
		wantCode int
		want     string
	}{
		{[]string{"POST", "https://api.openai.com/v1/chat/completions"}, 0, "action:     allow"},
		{[]string{"POST", "https://api.openai.com/v1/chat/completions", "-H", "X-HTTP-Method-Override: DELETE"}, 3, "X-HTTP-Method-Override header names method DELETE"},
		{[]string{"POST", "https://api.openai.com/v1/chat/completions", "--header", "X-Method-Override: delete"}, 3, "X-Method-Override header names method DELETE"},
		{[]string{"POST", "https://api.openai.com/v1/chat/completions", "-H", "bad header"}, 1, ""},
	} {
		code, out, errs := runSluice(t, append([]string{"policy", "explain", pol}, tt.args...)...)
		if code != tt.wantCode || !strings.Contains(out, tt.want) {
			t.Errorf("%v: exit %d, want %d and %q\n%s%s", tt.args, code, tt.wantCode, tt.want, out, errs)
		}
	}
}

// TestPolicyCheckInsecureHTTP: policy check warns about insecure_http.
func TestPolicyCheckInsecureHTTP(t *testing.T) {
	code, out, errs := runSluice(t, "policy", "check", policiesDir+"/warn/insecure_http.yaml")
	if code != 0 || !strings.Contains(out, "insecure_http.yaml: ok (1 rules)") ||
		!strings.Contains(errs, "insecure_http.yaml:7:20: warning: rules[0].insecure_http: the rule's credentials are sent in cleartext") {
		t.Fatalf("exit %d\n%s%s", code, out, errs)
	}
}

func TestPolicyExplainErrors(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"bad policy", []string{"policy", "explain", policiesDir + "/bad/bad_cidr.yaml", "GET", "https://x.test/"}, 1, "bad_cidr.yaml:4:13: rules[0].cidrs[0]"},
		{"bad scheme", []string{"policy", "explain", policiesDir + "/demo.yaml", "GET", "ftp://allowed.test/"}, 1, `scheme "ftp" is not http or https`},
		{"bad port", []string{"policy", "explain", policiesDir + "/demo.yaml", "GET", "https://allowed.test:0/"}, 1, `port "0" is not 1-65535`},
		{"arguments", []string{"policy", "explain", policiesDir + "/demo.yaml", "GET"}, 1, "accepts 3 arg(s)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errs := runSluice(t, tt.args...)
			if code != tt.wantCode || !strings.Contains(errs, tt.wantErr) {
				t.Fatalf("exit %d stderr %q, want %d %q", code, errs, tt.wantCode, tt.wantErr)
			}
		})
	}
}

// TestPolicyExplainNoSecrets: explain never prints a secret's value, even
// when the environment holds one under the placeholder's name.
func TestPolicyExplainNoSecrets(t *testing.T) {
	t.Setenv("DEMO_TOKEN", "demo-secret-value-123")
	for _, json := range []bool{false, true} {
		args := []string{"policy", "explain", policiesDir + "/demo.yaml", "GET", "https://allowed.test/"}
		if json {
			args = append(args, "--json")
		}
		code, out, errs := runSluice(t, args...)
		if code != 0 || strings.Contains(out+errs, "demo-secret-value-123") || !strings.Contains(out, "Bearer <secret:DEMO_TOKEN>") {
			t.Fatalf("exit %d\n%s%s", code, out, errs)
		}
	}
}

// TestPolicyDiff replays the committed audit fixture against the
// openai-github example and its candidate successor; the changed
// decisions are exactly the ones the successor's comment lists.
func TestPolicyDiff(t *testing.T) {
	oldP := policiesDir + "/openai-github.yaml"
	newP := "../../testdata/audit/openai-github-next.yaml"
	log := "../../testdata/audit/sample.jsonl"

	code, out, errs := runSluice(t, "policy", "diff", oldP, newP, "--audit", log, "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var got struct {
		Events  int `json:"events"`
		Skipped int `json:"skipped"`
		Changes []struct {
			Change, Kind, Target, Old, New string
			OldRule                        string `json:"old_rule"`
			NewRule                        string `json:"new_rule"`
			Count                          int
		} `json:"changes"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	if got.Events != 13 || got.Skipped != 2 {
		t.Errorf("events %d skipped %d, want 13 and 2 (kernel and secret events are skipped)", got.Events, got.Skipped)
	}
	var lines []string
	for _, c := range got.Changes {
		lines = append(lines, fmt.Sprintf("%s %s %q x%d: %s/%s -> %s/%s", c.Change, c.Kind, c.Target, c.Count, c.Old, c.OldRule, c.New, c.NewRule))
	}
	want := []string{
		`newly_denied http "GET api.openai.com/v1/models port 443" x2: allow/openai -> deny/`,
		`newly_allowed http "GET api.github.com/orgs/acme port 443" x1: deny/ -> allow/github-api`,
		`newly_denied dns "objects.githubusercontent.com" x1: allow/github-web -> deny/`,
		`newly_denied conn "objects.githubusercontent.com port 443" x1: splice/github-web -> deny/`,
		`newly_allowed dns "pypi.org" x1: deny/ -> allow/pypi`,
		`newly_allowed http "GET pypi.org/simple/requests/ port 443" x1: deny/ -> allow/pypi`,
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("changes:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}

	// The text form groups the same changes.
	code, out, _ = runSluice(t, "policy", "diff", oldP, newP, "--audit", log)
	if code != 0 || !strings.Contains(out, "replayed 13 events (2 skipped): 6 changed decisions") ||
		!strings.Contains(out, "newly denied (3):") || !strings.Contains(out, "newly allowed (3):") {
		t.Fatalf("exit %d:\n%s", code, out)
	}

	// A policy against itself changes nothing.
	code, out, _ = runSluice(t, "policy", "diff", oldP, oldP, "--audit", log)
	if code != 0 || !strings.Contains(out, ": 0 changed decisions") || strings.Contains(out, "newly") {
		t.Fatalf("self diff: exit %d:\n%s", code, out)
	}
}

func TestPolicyDiffErrors(t *testing.T) {
	demo := policiesDir + "/demo.yaml"
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"no audit flag", []string{"policy", "diff", demo, demo}, "--audit LOG.jsonl is required"},
		{"missing log", []string{"policy", "diff", demo, demo, "--audit", "/nonexistent/audit.jsonl"}, "reading audit log"},
		{"bad new policy", []string{"policy", "diff", demo, policiesDir + "/bad/bad_mode.yaml", "--audit", "../../testdata/audit/sample.jsonl"}, "bad_mode.yaml:2:7: mode"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errs := runSluice(t, tt.args...)
			if code != 1 || !strings.Contains(errs, tt.wantErr) {
				t.Fatalf("exit %d stderr %q, want 1 and %q", code, errs, tt.wantErr)
			}
		})
	}
}
