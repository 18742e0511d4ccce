package policy

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestGateWarnings: insecure_http parses, and policy check warns about it.
func TestGateWarnings(t *testing.T) {
	t.Parallel()
	path := "../../testdata/policies/warn/insecure_http.yaml"
	p, err := Load(path)
	if err != nil {
		t.Fatalf("a warning must not fail the parse: %v", err)
	}
	if len(p.Warnings) != 1 || !p.Rules[0].InsecureHTTP {
		t.Fatalf("warnings %v, rule %+v", p.Warnings, p.Rules[0])
	}
	want := path + ":7:20: warning: rules[0].insecure_http: the rule's credentials are sent in cleartext"
	if w := p.Warnings[0].String(); !strings.HasPrefix(w, want) {
		t.Fatalf("warning\n%s\nwant\n%s", w, want)
	}
	p = mustParse(t, `version: 1
rules:
  - {name: a, hosts: [a.test], insecure_http: true}
`)
	if len(p.Warnings) != 1 || !strings.Contains(p.Warnings[0].Msg, "has no effect") {
		t.Fatalf("warnings %v", p.Warnings)
	}
}

// TestGateFields: the example policy for case_insensitive_paths loads and
// folds case, and the two fields default to false.
func TestGateFields(t *testing.T) {
	t.Parallel()
	p, err := Load("../../testdata/policies/case-folding-wiki.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !p.Rules[0].CaseInsensitivePaths || p.Rules[0].InsecureHTTP {
		t.Fatalf("%+v", p.Rules[0])
	}
	for _, tt := range []struct {
		method, url string
		allowed     bool
		status      int
	}{
		{"GET", "https://wiki.corp.internal/Pages/Home", true, 0},
		{"GET", "https://wiki.corp.internal/PAGES/ADMIN/users", false, 403},
		{"GET", "https://wiki.corp.internal/pages/Admin/", false, 403},
		{"GET", "https://wiki.corp.internal/pages/Admin", false, 403},
		{"GET", "https://wiki.corp.internal//pages/admin", false, 400},
		{"GET", "https://wiki.corp.internal/pages/x/../admin", false, 400},
		{"GET", "https://wiki.corp.internal/pages;x/admin", false, 400},
		{"GET", "https://wiki.corp.internal/pages%2Fadmin", false, 400},
		{"GET", `https://wiki.corp.internal/pages\admin`, false, 400},
		{"GET", "https://wiki.corp.internal/API/V2/search?q=x", true, 0},
		{"POST", "https://wiki.corp.internal/pages/x?_method=DELETE", false, 403},
		{"GET", "http://wiki.corp.internal/pages/x", false, 403},
	} {
		e, err := p.Explain(tt.method, tt.url)
		if err != nil {
			t.Fatal(err)
		}
		if e.Allowed != tt.allowed || e.Status != tt.status {
			t.Errorf("%s %s: allowed %v status %d (%s), want %v %d", tt.method, tt.url, e.Allowed, e.Status, e.Reason, tt.allowed, tt.status)
		}
	}
	p = mustParse(t, "version: 1\nrules: [{name: a, hosts: [a.test]}]\n")
	if r := p.Rules[0]; r.InsecureHTTP || r.CaseInsensitivePaths {
		t.Fatalf("defaults: %+v", r)
	}
	if _, err := Parse("f.yaml", []byte("version: 1\nrules: [{name: a, hosts: [a.test], case_insensitive_paths: yes-please}]\n")); err == nil || !strings.Contains(err.Error(), "rules[0].case_insensitive_paths: expect true or false") {
		t.Fatalf("err = %v", err)
	}
}

// TestGateSchema: schema.json describes the two gate fields as booleans
// defaulting to false (TestSchemaMatchesParser checks the field names).
func TestGateSchema(t *testing.T) {
	t.Parallel()
	var s struct {
		Defs map[string]struct {
			Properties map[string]struct {
				Type        string          `json:"type"`
				Default     json.RawMessage `json:"default"`
				Description string          `json:"description"`
			} `json:"properties"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(Schema, &s); err != nil {
		t.Fatal(err)
	}
	for _, f := range gateFields {
		p, ok := s.Defs["rule"].Properties[f]
		if !ok || p.Type != "boolean" || string(p.Default) != "false" || p.Description == "" {
			t.Errorf("schema rule.%s = %+v", f, p)
		}
	}
}
