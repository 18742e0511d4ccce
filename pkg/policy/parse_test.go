package policy

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestExamplePolicies loads every example policy: each must be valid and
// free of warnings (they are what users copy).
func TestExamplePolicies(t *testing.T) {
	files, err := filepath.Glob("../../testdata/policies/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 5 {
		t.Fatalf("found only %d example policies", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			p, err := Load(f)
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Rules) == 0 {
				t.Fatal("no rules")
			}
			if len(p.Warnings) > 0 {
				t.Fatalf("warnings: %v", p.Warnings)
			}
		})
	}
}

// TestDemoPolicy pins the policy `make demo` and the e2e tests rely on.
func TestDemoPolicy(t *testing.T) {
	p, err := Load("../../testdata/policies/demo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Rules) != 2 || p.Rules[0].Name != "api" || p.Rules[1].Name != "plain" {
		t.Fatalf("rules: %+v", p.Rules)
	}
	api := p.Rules[0]
	if !reflect.DeepEqual(api.Hosts, []string{"allowed.test"}) || len(api.Headers) != 1 {
		t.Fatalf("api rule: %+v", api)
	}
	h := api.Headers[0]
	if h.Name != "Authorization" || h.Type != HeaderSecret || h.Value != "Bearer {DEMO_TOKEN}" || !reflect.DeepEqual(h.Secrets, []string{"DEMO_TOKEN"}) {
		t.Fatalf("api header: %+v", h)
	}
	if !reflect.DeepEqual(p.Rules[1].Hosts, []string{"plain.test"}) || p.Rules[1].NeedsIntercept() {
		t.Fatalf("plain rule: %+v", p.Rules[1])
	}
	if m := p.MatchConn("allowed.test", 443); m.Verdict != VerdictIntercept || m.Rule != api {
		t.Fatalf("allowed.test: %+v", m)
	}
	if m := p.MatchConn("plain.test", 80); m.Verdict != VerdictSplice {
		t.Fatalf("plain.test: %+v", m)
	}
	if m := p.MatchConn("other.test", 443); m.Verdict != VerdictDeny || m.Rule != nil {
		t.Fatalf("other.test: %+v", m)
	}
}

// TestBadPolicies: each file under testdata/policies/bad holds exactly one
// mistake; the error names it at its exact position.
func TestBadPolicies(t *testing.T) {
	tests := []struct {
		file    string
		wantErr string // after "FILE:"
	}{
		{"bad_action.yaml", "5:13: rules[0].action: \"permit\" is not one of allow, deny"},
		{"bad_cidr.yaml", "4:13: rules[0].cidrs[0]: \"10.0.5/24\" is not a CIDR"},
		{"bad_env_name.yaml", "5:11: rules[0].env.1KEY: \"1KEY\" is not a variable name"},
		{"bad_glob.yaml", "5:13: rules[0].paths[0]: \"/v1/**x\" is not a valid pattern: \"**\" must be a whole segment"},
		{"bad_host_wildcard.yaml", "4:13: rules[0].hosts[0]: \"*.*.com\" is not a valid pattern"},
		{"bad_ipv6.yaml", "2:7: ipv6: expect true or false, got a string"},
		{"bad_method.yaml", "5:15: rules[0].methods[0]: \"GET /\" is not an HTTP method"},
		{"bad_mode.yaml", "2:7: mode: \"permissive\" is not one of enforce, audit"},
		{"bad_path.yaml", "5:13: rules[0].paths[0]: \"v1/*\" must start with '/'"},
		{"bad_remap.yaml", "5:12: rules[0].remap: \"mirror.internal:99999\": port \"99999\" is not an integer from 1 to 65535"},
		{"bad_rule_name.yaml", "3:11: rules[0].name: \"my api\" is not a valid rule name"},
		{"bad_version.yaml", "1:10: version: \"2\" is not a supported version"},
		{"callback_bad_ttl.yaml", "5:63: rules[0].callback.ttl: expect a duration such as 30s, 5m or 1h, got \"300\""},
		{"callback_bad_url.yaml", "5:21: rules[0].callback.url: \"ftp://creds.corp.internal/x\" is not an http:// or https:// URL"},
		{"callback_no_url.yaml", "5:15: rules[0].callback.url: required"},
		{"cidr_host_bits.yaml", "4:13: rules[0].cidrs[0]: \"10.0.5.1/24\" has bits set past the prefix length"},
		{"conflicting_rules.yaml", "6:13: rules[1].hosts[0]: conflicts with rules[0] (api): both match \"api.example.com\" with the same paths, methods and ports, one allows and one denies"},
		{"deny_with_headers.yaml", "7:7: rules[0].headers: a deny rule cannot have headers"},
		{"direct_headers.yaml", "7:7: rules[0].headers: a direct rule bypasses the proxy, so it cannot inject headers"},
		{"direct_hosts_ports.yaml", "6:12: rules[0].ports: a direct rule with hosts cannot restrict ports"},
		{"direct_paths.yaml", "6:12: rules[0].paths: a direct rule bypasses the proxy, so it cannot check paths"},
		{"duplicate_field.yaml", "5:5: rules[0].hosts: duplicate field"},
		{"duplicate_name.yaml", "5:11: rules[1].name: \"api\" is already the name of rules[0]"},
		{"duplicate_rule.yaml", "7:13: rules[1].hosts[0]: duplicates rules[0] (api): both allow \"api.example.com\""},
		{"empty.yaml", "1:1: empty policy"},
		{"env_conflict.yaml", "8:20: rules[1].env.API_KEY: rules[0] (a) sets API_KEY to a different value"},
		{"header_crlf.yaml", "6:45: rules[0].headers[0].value: contains CR, LF or NUL, which cannot go in a header"},
		{"header_missing_type.yaml", "6:9: rules[0].headers[0].type: required"},
		{"host_invalid_char.yaml", "4:13: rules[0].hosts[0]: \"api_example com\" is not a valid host name"},
		{"host_is_ip.yaml", "4:13: rules[0].hosts[0]: \"10.0.0.1\" is an IP address"},
		{"host_star.yaml", "4:13: rules[0].hosts[0]: \"*\" would match every name"},
		{"host_with_port.yaml", "4:13: rules[0].hosts[0]: \"api.example.com:8443\" has a port"},
		{"insecure_http_deny.yaml", "6:20: rules[0].insecure_http: a deny rule injects nothing; drop insecure_http"},
		{"listen_no_from.yaml", "4:13: rules[0].listen.from: required; list the peers that may connect"},
		{"listen_with_hosts.yaml", "4:5: rules[0].hosts: a listen rule has only name and listen"},
		{"merge_key.yaml", "4:5: rules[1]: merge keys"},
		{"missing_name.yaml", "3:5: rules[0].name: required"},
		{"missing_rules.yaml", "1:1: rules: required"},
		{"missing_version.yaml", "1:1: version: required"},
		{"no_hosts.yaml", "3:5: rules[0]: needs hosts or cidrs"},
		{"path_query.yaml", "5:13: rules[0].paths[0]: \"/search?q=*\" contains '?' or '#'"},
		{"plaintext_placeholder.yaml", "6:49: rules[0].headers[0].value: placeholder {API_TOKEN} has no secret source in a plaintext header and would be sent literally"},
		{"remap_mismatch.yaml", "7:13: rules[1].hosts[0]: rules[0] (npm) also allows \"registry.npmjs.org\" with a different remap"},
		{"remap_without_hosts.yaml", "5:12: rules[0].remap: remap works through DNS and needs hosts"},
		{"processes_direct.yaml", "6:16: rules[0].processes: a direct rule bypasses the proxy, so it cannot check processes"},
		{"processes_relative.yaml", "5:17: rules[0].processes[0]: \"bin/git\" is a relative path"},
		{"processes_wildcard.yaml", "5:17: rules[0].processes[0]: \"git*\" is not an executable"},
		{"redact_missing_with.yaml", "7:11: rules[0].request.redact_body[0].with: required"},
		{"request_bad_pattern.yaml", "6:19: rules[0].request.deny_body[0]: \"(unclosed\" is not an RE2 pattern"},
		{"request_bad_size.yaml", "6:17: rules[0].request.max_body: \"10 parsecs\" is not a size; expect a number with an optional unit (B, KB, MB, GB, KiB, MiB, GiB)"},
		{"request_empty_match.yaml", "7:21: rules[0].request.redact_body[0].pattern: \"x*\" matches the empty string"},
		{"request_on_deny.yaml", "7:7: rules[0].request: a deny rule cannot have request"},
		{"request_on_direct.yaml", "7:7: rules[0].request: a direct rule bypasses the proxy, so it cannot shape requests"},
		{"reserved_header.yaml", "6:16: rules[0].headers[0].name: Host is managed by the proxy and cannot be injected"},
		{"rules_not_list.yaml", "3:3: rules: expect a list, got a mapping"},
		{"secret_no_placeholder.yaml", "6:52: rules[0].headers[0].value: a secret header needs a {NAME} placeholder naming its secret source, for example \"Bearer {API_TOKEN}\""},
		{"unclosed_placeholder.yaml", "6:52: rules[0].headers[0].value: unclosed '{' at offset 7"},
		{"unknown_field.yaml", "4:5: rules[0].hostz: unknown field"},
		{"unknown_header_type.yaml", "7:15: rules[0].headers[0].type: \"secrt\" is not one of secret, plaintext, opaque"},
		{"unknown_top_field.yaml", "2:1: rulez: unknown field"},
		{"wrong_type_direct.yaml", "5:13: rules[0].direct: expect true or false, got a string"},
		{"wrong_type_hosts.yaml", "4:12: rules[0].hosts: expect a list, got a string"},
		{"wrong_type_port.yaml", "5:13: rules[0].ports[0]: \"https\" is not a port"},
		{"yaml_syntax.yaml", "3:1: invalid YAML: did not find expected ',' or ']'"},
	}
	files, err := filepath.Glob("../../testdata/policies/bad/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	covered := map[string]bool{}
	for _, tt := range tests {
		covered[tt.file] = true
		t.Run(tt.file, func(t *testing.T) {
			path := "../../testdata/policies/bad/" + tt.file
			_, err := Load(path)
			if err == nil {
				t.Fatal("parsed without error")
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error %T is not policy.Errors: %v", err, err)
			}
			if len(errs.Errs()) != 1 {
				t.Fatalf("want exactly one error, got:\n%v", err)
			}
			if want := path + ":" + tt.wantErr; !strings.Contains(err.Error(), want) {
				t.Fatalf("error\n%v\nwant it to contain\n%s", err, want)
			}
		})
	}
	for _, f := range files {
		if !covered[filepath.Base(f)] {
			t.Errorf("%s has no entry in the table", f)
		}
	}
}

// TestAllProblemsAtOnce: one pass reports every problem, sorted by
// position, each with its own file:line:col.
func TestAllProblemsAtOnce(t *testing.T) {
	src := `version: 2
mode: strict
rules:
  - name: a
    hosts: ["*.*.com", api.example.com]
    paths: ["nope"]
    cidrs: [300.0.0.0/8]
    headers:
      - {name: Authorization, type: secrt, value: "Bearer {T}"}
      - {name: X-Key, type: plaintext, value: "{T}"}
    direct: true
  - name: a
    hosts: [www.example.com]
    headers: [{name: Authorization, type: plaintext, value: abc}]
    colour: blue
`
	_, err := Parse("p.yaml", []byte(src))
	want := []string{
		`p.yaml:1:10: version: "2" is not a supported version; expect 1`,
		`p.yaml:2:7: mode: "strict" is not one of enforce, audit`,
		`p.yaml:5:13: rules[0].hosts[0]: "*.*.com" is not a valid pattern`,
		`p.yaml:6:12: rules[0].paths: a direct rule bypasses the proxy, so it cannot check paths`,
		`p.yaml:6:13: rules[0].paths[0]: "nope" must start with '/'`,
		`p.yaml:7:13: rules[0].cidrs[0]: "300.0.0.0/8" is not a CIDR`,
		`p.yaml:9:7: rules[0].headers: a direct rule bypasses the proxy, so it cannot inject headers`,
		`p.yaml:9:37: rules[0].headers[0].type: "secrt" is not one of secret, plaintext, opaque`,
		`p.yaml:10:47: rules[0].headers[1].value: placeholder {T} has no secret source in a plaintext header`,
		`p.yaml:12:11: rules[1].name: "a" is already the name of rules[0]`,
		`p.yaml:14:61: warning: rules[1].headers[0].value: plaintext Authorization value`,
		`p.yaml:15:5: rules[1].colour: unknown field`,
	}
	if err == nil {
		t.Fatal("no error")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%v", len(lines), len(want), err)
	}
	for i := range want {
		if !strings.HasPrefix(lines[i], want[i]) {
			t.Errorf("problem %d:\n got %s\nwant %s...", i, lines[i], want[i])
		}
	}
}

func TestWarnings(t *testing.T) {
	path := "../../testdata/policies/warn/plaintext_authorization.yaml"
	p, err := Load(path)
	if err != nil {
		t.Fatalf("a warning must not fail the parse: %v", err)
	}
	if len(p.Warnings) != 1 {
		t.Fatalf("warnings: %v", p.Warnings)
	}
	w := p.Warnings[0]
	want := path + ":6:55: warning: rules[0].headers[0].value: plaintext Authorization value is readable by anyone who can read the policy; use type: secret"
	if !w.Warning || !strings.HasPrefix(w.String(), want) {
		t.Fatalf("warning\n%s\nwant\n%s", w, want)
	}
	if strings.Contains(w.String(), "dXNlcjpwYXNz") {
		t.Fatal("the warning shows the value")
	}
}

// TestParseFields covers every field and its default.
func TestParseFields(t *testing.T) {
	const src = `version: 1
mode: audit
ipv6: false
rules:
  - name: full
    hosts: [API.Example.COM., "*.svc.example.com", "**.cdn.example.com", xn--bcher-kva.example]
    paths: ["/v1/*", "/v2/**"]
    methods: [get, Post, GET]
    ports: [443, 8443, 443]
    cidrs: [10.0.5.0/24, 10.0.6.7, "fd00::/64", "fd00::1"]
    action: allow
    headers:
      - {name: authorization, type: secret, value: "Bearer {TOKEN_A}:{TOKEN-B.2}"}
      - {name: x-plain, type: plaintext, value: "v1"}
      - {name: x-opaque, type: opaque, value: "write-only"}
    remap: mirror.example.com:9443
    callback: {url: "https://creds.example.com/h", ttl: 1h, timeout: 250ms}
    env: {API_KEY: sluice-managed, OTHER: "x"}
  - name: defaults
    hosts: [plain.example.com]
    callback: {url: "http://127.0.0.1:9000/credentials"}
    remap: mirror2.example.com
    env: {API_KEY: sluice-managed}
  - name: deny
    hosts: [bad.example.com]
    action: deny
  - name: direct
    cidrs: [192.0.2.0/24]
    ports: [5432]
    direct: true
  - name: aliased
    hosts: &h [alias.example.com]
  - name: aliased2
    hosts: *h
    ports: [22]
`
	p, err := Parse("f.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if p.Version != 1 || p.Mode != ModeAudit || p.IPv6 || p.File != "f.yaml" || len(p.Rules) != 6 {
		t.Fatalf("top level: %+v", p)
	}
	want := &Rule{
		Index:   0,
		Name:    "full",
		Hosts:   []string{"api.example.com", "*.svc.example.com", "**.cdn.example.com", "xn--bcher-kva.example"},
		Paths:   []string{"/v1/*", "/v2/**"},
		Methods: []string{"GET", "POST"},
		Ports:   []uint16{443, 8443},
		CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.5.0/24"), netip.MustParsePrefix("10.0.6.7/32"),
			netip.MustParsePrefix("fd00::/64"), netip.MustParsePrefix("fd00::1/128")},
		Action: ActionAllow,
		Headers: []Header{
			{Name: "Authorization", Type: HeaderSecret, Value: "Bearer {TOKEN_A}:{TOKEN-B.2}", Secrets: []string{"TOKEN_A", "TOKEN-B.2"}},
			{Name: "X-Plain", Type: HeaderPlaintext, Value: "v1"},
			{Name: "X-Opaque", Type: HeaderOpaque, Value: "write-only"},
		},
		Remap:    &Remap{Host: "mirror.example.com", Port: 9443},
		Callback: &Callback{URL: "https://creds.example.com/h", TTL: time.Hour, Timeout: 250 * time.Millisecond},
		Env:      map[string]string{"API_KEY": "sluice-managed", "OTHER": "x"},
	}
	if !reflect.DeepEqual(p.Rules[0], want) {
		t.Fatalf("rule 0\n got %+v\nwant %+v", p.Rules[0], want)
	}
	d := p.Rules[1]
	if d.Action != ActionAllow || d.Callback == nil || d.Callback.TTL != 5*time.Minute || d.Callback.Timeout != 2*time.Second ||
		d.Remap == nil || *d.Remap != (Remap{Host: "mirror2.example.com"}) || !d.NeedsIntercept() {
		t.Fatalf("defaults: %+v", d)
	}
	if p.Rules[2].Action != ActionDeny || p.Rules[2].NeedsIntercept() {
		t.Fatalf("deny: %+v", p.Rules[2])
	}
	if r := p.Rules[3]; !r.Direct || len(r.Hosts) != 0 || r.NeedsIntercept() {
		t.Fatalf("direct: %+v", r)
	}
	if !reflect.DeepEqual(p.Rules[5].Hosts, []string{"alias.example.com"}) {
		t.Fatalf("alias: %+v", p.Rules[5])
	}
	if !reflect.DeepEqual(p.Env, map[string]string{"API_KEY": "sluice-managed", "OTHER": "x"}) {
		t.Fatalf("env: %v", p.Env)
	}
	static := p.StaticCIDRs()
	if len(static) != 5 || static[4].Prefix != netip.MustParsePrefix("192.0.2.0/24") || !static[4].Direct ||
		!reflect.DeepEqual(static[4].Ports, []uint16{5432}) || static[4].Rule != p.Rules[3] || static[0].Rule != p.Rules[0] {
		t.Fatalf("static: %+v", static)
	}
	// Defaults of the top level.
	p, err = Parse("min.yaml", []byte("version: 1\nrules: []\n"))
	if err != nil {
		t.Fatal(err)
	}
	if p.Mode != ModeEnforce || !p.IPv6 || len(p.Rules) != 0 {
		t.Fatalf("defaults: %+v", p)
	}
	if m := p.MatchConn("example.com", 443); m.Verdict != VerdictDeny {
		t.Fatalf("empty policy allows: %+v", m)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "none.yaml"))
	if err == nil || !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "reading policy") {
		t.Fatalf("err = %v", err)
	}
}

// TestAliasBomb: aliases that expand exponentially are refused quickly.
func TestAliasBomb(t *testing.T) {
	var b strings.Builder
	b.WriteString("version: 1\nx0: &a0 [x, x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i < 12; i++ {
		b.WriteString("x" + strconv.Itoa(i) + ": &a" + strconv.Itoa(i) + " [")
		for j := 0; j < 10; j++ {
			if j > 0 {
				b.WriteString(", ")
			}
			b.WriteString("*a" + strconv.Itoa(i-1))
		}
		b.WriteString("]\n")
	}
	b.WriteString("rules: []\n")
	start := time.Now()
	_, err := Parse("bomb.yaml", []byte(b.String()))
	if err == nil {
		t.Fatal("no error")
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("took %v", time.Since(start))
	}
}
