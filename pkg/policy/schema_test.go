package policy

import (
	"encoding/json"
	"regexp"
	"slices"
	"sort"
	"testing"
)

// TestSchemaMatchesParser keeps schema.json in step with the parser: the
// same fields at every level, the same enums, and patterns that accept the
// example values and refuse the bad ones.
func TestSchemaMatchesParser(t *testing.T) {
	var s struct {
		Properties map[string]json.RawMessage `json:"properties"`
		Defs       map[string]struct {
			Properties map[string]json.RawMessage `json:"properties"`
			Pattern    string                     `json:"pattern"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(Schema, &s); err != nil {
		t.Fatalf("schema.json is not JSON: %v", err)
	}
	keys := func(m map[string]json.RawMessage) []string {
		var out []string
		for k := range m {
			out = append(out, k)
		}
		sort.Strings(out)
		return out
	}
	sorted := func(xs ...string) []string { ys := slices.Clone(xs); sort.Strings(ys); return ys }
	for _, c := range []struct {
		level string
		got   []string
		want  []string
	}{
		{"top", keys(s.Properties), sorted("version", "mode", "ipv6", "rules", "limits")},
		{"rule", keys(s.Defs["rule"].Properties), sorted(ruleFields...)},
		{"header", keys(s.Defs["header"].Properties), sorted("name", "type", "value")},
		{"callback", keys(s.Defs["callback"].Properties), sorted("url", "ttl", "timeout")},
		{"request", keys(s.Defs["request"].Properties), sorted("max_body", "deny_body", "redact_body", "json")},
		{"redaction", keys(s.Defs["redaction"].Properties), sorted("pattern", "with")},
	} {
		if !slices.Equal(c.got, c.want) {
			t.Errorf("%s fields: schema %v, parser %v", c.level, c.got, c.want)
		}
	}
	host := regexp.MustCompile(s.Defs["hostPattern"].Pattern)
	for _, h := range []string{"api.example.com", "*.githubusercontent.com", "**.corp.internal", "API.Example.com.", "xn--bcher-kva.example"} {
		if !host.MatchString(h) {
			t.Errorf("schema refuses host %q", h)
		}
		if _, _, msg := parseHostPattern(h); msg != "" {
			t.Errorf("parser refuses host %q: %s", h, msg)
		}
	}
	for _, h := range []string{"*.*.com", "*", "a b.com", "api.example.com:443", "-a.example"} {
		if host.MatchString(h) {
			t.Errorf("schema accepts host %q", h)
		}
		if _, _, msg := parseHostPattern(h); msg == "" {
			t.Errorf("parser accepts host %q", h)
		}
	}
	dur := regexp.MustCompile(s.Defs["duration"].Pattern)
	for _, d := range []string{"5m", "1500ms", "1h30m", "2s"} {
		if !dur.MatchString(d) {
			t.Errorf("schema refuses duration %q", d)
		}
	}
	if dur.MatchString("300") {
		t.Error("schema accepts a bare number as a duration")
	}
}
