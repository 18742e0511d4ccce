package policy

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
)

// TestRequestShapingExample pins testdata/policies/request-shaping.yaml,
// the README's worked example.
func TestRequestShapingExample(t *testing.T) {
	p, err := Load("../../testdata/policies/request-shaping.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r := p.Rules[0]
	q := r.Request
	if q == nil || q.MaxBody != 10<<20 || len(q.DenyBody) != 1 || len(q.Redact) != 1 || !q.JSON || !q.Rewrites() {
		t.Fatalf("request: %+v", q)
	}
	if !q.DenyBody[0].MatchString("x -----BEGIN OPENSSH PRIVATE KEY-----") {
		t.Fatal("deny_body does not match an OpenSSH key header")
	}
	if got := q.Redact[0].Pattern.ReplaceAllLiteralString("ssn 123-45-6789.", q.Redact[0].With); got != "ssn [ssn]." {
		t.Fatalf("redaction: %q", got)
	}
	if m := p.MatchConn("upload.example.com", 443); m.Verdict != VerdictIntercept {
		t.Fatalf("a request: rule must be intercepted: %+v", m)
	}
	// request: alone makes a rule intercepted.
	p2 := mustParse(t, "version: 1\nrules:\n  - name: a\n    hosts: [a.test]\n    request: {json: true}\n")
	if m := p2.MatchConn("a.test", 443); m.Verdict != VerdictIntercept {
		t.Fatalf("request-only rule: %+v", m)
	}
}

func TestParseSize(t *testing.T) {
	t.Parallel()
	schema := sizeSchemaPattern(t)
	for _, tt := range []struct {
		in   string
		want int64
	}{
		{"512", 512}, {"1B", 1}, {"64KiB", 64 << 10}, {"10MiB", 10 << 20}, {"1GiB", 1 << 30}, {"2 MB", 2_000_000}, {"3KB", 3000}, {"1GB", 1e9},
		{"", -1}, {"MiB", -1}, {"0", -1}, {"10mib", -1}, {"1.5MiB", -1}, {"-1", -1}, {"10 parsecs", -1}, {"99999999999999GiB", -1},
	} {
		got, err := ParseSize(tt.in)
		if tt.want < 0 {
			if err == nil {
				t.Errorf("ParseSize(%q) = %d, want an error", tt.in, got)
			}
		} else if err != nil || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
		// The schema accepts what the parser accepts (except too large).
		if ok := schema.MatchString(tt.in); ok != (tt.want >= 0) && tt.in != "0" && tt.in != "99999999999999GiB" {
			t.Errorf("schema pattern on %q: %v", tt.in, ok)
		}
	}
}

func sizeSchemaPattern(t *testing.T) *regexp.Regexp {
	var s struct {
		Defs map[string]struct {
			Properties map[string]struct {
				OneOf []struct {
					Pattern string `json:"pattern"`
				} `json:"oneOf"`
			} `json:"properties"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(Schema, &s); err != nil {
		t.Fatal(err)
	}
	for _, o := range s.Defs["request"].Properties["max_body"].OneOf {
		if o.Pattern != "" {
			return regexp.MustCompile(o.Pattern)
		}
	}
	t.Fatal("schema has no max_body pattern")
	return nil
}

func TestProcessMatches(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		names []string
		exe   string
		want  bool
	}{
		{[]string{"git"}, "/usr/bin/git", true},
		{[]string{"git"}, "/usr/lib/git-core/git-remote-http", true},
		{[]string{"git"}, "/usr/libexec/git-core/git-upload-pack", true},
		{[]string{"git"}, "/usr/lib/git-core/git", true},
		{[]string{"git"}, "/tmp/gitx", false},
		{[]string{"git"}, "/tmp/git-remote-http", false}, // not in git-core
		{[]string{"git"}, "/usr/bin/curl", false},
		{[]string{"git"}, "", false},
		{[]string{"git"}, "/usr/bin/git (deleted)", false},
		{[]string{"/usr/bin/git"}, "/usr/bin/git", true},
		{[]string{"/usr/bin/git"}, "/tmp/usr/bin/git", false},
		{[]string{"/usr/bin/git"}, "/usr/lib/git-core/git-remote-http", false},
		{[]string{"pip", "python3"}, "/usr/bin/python3", true},
	} {
		if got := ProcessMatches(tt.names, tt.exe); got != tt.want {
			t.Errorf("ProcessMatches(%v, %q) = %v, want %v", tt.names, tt.exe, got, tt.want)
		}
	}
}

// TestForProcess: the view for an executable leaves out the rules of other
// processes, explains the refusal, and DNS is unaffected.
func TestForProcess(t *testing.T) {
	t.Parallel()
	p, err := Load("../../testdata/policies/per-process.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !p.HasProcesses() {
		t.Fatal("HasProcesses false")
	}
	if m := p.MatchName("git.example.com"); !m.Allowed {
		t.Fatal("DNS for git.example.com must stay allowed for the whole sandbox")
	}
	git := p.ForProcess("/usr/bin/git")
	if git != p.ForProcess("/usr/bin/git") {
		t.Fatal("views are not cached")
	}
	if m := git.MatchConn("git.example.com", 443); m.Verdict != VerdictSplice || m.Rule.Name != "git-host" {
		t.Fatalf("git: %+v", m)
	}
	if m := p.ForProcess("/usr/lib/git-core/git-remote-http").MatchConn("git.example.com", 443); m.Verdict != VerdictSplice {
		t.Fatalf("git-remote-http: %+v", m)
	}
	curl := p.ForProcess("/usr/bin/curl")
	m := curl.MatchConn("git.example.com", 443)
	if m.Verdict != VerdictDeny || !strings.Contains(m.Reason, "rule git-host applies only to processes git") || !strings.Contains(m.Reason, "/usr/bin/curl") {
		t.Fatalf("curl: %+v", m)
	}
	if m := curl.MatchConn("other.example.com", 443); m.Verdict != VerdictDeny || m.Reason != "" {
		t.Fatalf("an unrelated refusal must not mention processes: %+v", m)
	}
	rm := curl.MatchRequest("api.openai.com", 443, "GET", "/v1/models")
	if rm.Allowed || !strings.Contains(rm.Reason, "model-api applies only to processes /usr/bin/python3") {
		t.Fatalf("curl request: %+v", rm)
	}
	if rm := p.ForProcess("/usr/bin/python3").MatchRequest("api.openai.com", 443, "GET", "/v1/models"); !rm.Allowed {
		t.Fatalf("python3 request: %+v", rm)
	}
	if rm := p.ForProcess("").MatchRequest("pypi.org", 443, "GET", "/simple/"); rm.Allowed {
		t.Fatal("an unknown executable matched a processes: rule")
	}
	// A policy without processes: is its own view.
	plain := mustParse(t, "version: 1\nrules:\n  - name: a\n    hosts: [a.test]\n")
	if plain.ForProcess("/usr/bin/curl") != plain || plain.HasProcesses() {
		t.Fatal("a policy without processes must be its own view")
	}
	var nilp *Policy
	if nilp.ForProcess("x") != nil {
		t.Fatal("nil policy view")
	}
	// Two rules for one host that differ by processes are not duplicates.
	mustParse(t, `version: 1
rules:
  - name: a
    hosts: [a.test]
    processes: [git]
  - name: b
    hosts: [a.test]
    action: deny
    processes: [curl]
`)
}

// TestProcessesSchema: the schema's pattern for processes entries agrees
// with the parser.
func TestProcessesSchema(t *testing.T) {
	var s struct {
		Defs map[string]struct {
			Properties map[string]struct {
				Items struct {
					Pattern string `json:"pattern"`
				} `json:"items"`
			} `json:"properties"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(Schema, &s); err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(s.Defs["rule"].Properties["processes"].Items.Pattern)
	for _, c := range []struct {
		v  string
		ok bool
	}{{"git", true}, {"/usr/bin/git", true}, {"git-remote-http", true}, {"bin/git", false}, {"git*", false}, {"/usr/bin/", false}, {"", false}} {
		y := "version: 1\nrules:\n  - name: a\n    hosts: [a.test]\n    processes: [\"" + c.v + "\"]\n"
		_, err := Parse("t.yaml", []byte(y))
		if (err == nil) != c.ok || re.MatchString(c.v) != c.ok {
			t.Errorf("%q: parser error %v, schema match %v; want ok=%v", c.v, err, re.MatchString(c.v), c.ok)
		}
	}
}
