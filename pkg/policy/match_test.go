package policy

import (
	"net/netip"
	"strings"
	"testing"
)

func mustParse(t testing.TB, src string) *Policy {
	t.Helper()
	p, err := Parse("test.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func ruleName(r *Rule) string {
	if r == nil {
		return "-"
	}
	return r.Name
}

// TestHostPatterns: exact, *.suffix (subdomains only) and **.suffix (the
// suffix itself and its subdomains), plus normalisation.
func TestHostPatterns(t *testing.T) {
	p := mustParse(t, `version: 1
rules:
  - {name: exact, hosts: [api.example.com]}
  - {name: sub, hosts: ["*.sub.example.com"]}
  - {name: self, hosts: ["**.self.example.com"]}
`)
	tests := []struct {
		name string
		host string
		want string // rule name, "-" for no match
	}{
		{"exact", "api.example.com", "exact"},
		{"exact upper case and trailing dot", "API.Example.Com.", "exact"},
		{"exact does not match a subdomain", "x.api.example.com", "-"},
		{"exact does not match the parent", "example.com", "-"},
		{"* matches one label below", "a.sub.example.com", "sub"},
		{"* matches several labels below", "a.b.c.sub.example.com", "sub"},
		{"* does not match the bare suffix", "sub.example.com", "-"},
		{"** matches the bare suffix", "self.example.com", "self"},
		{"** matches below", "a.b.self.example.com", "self"},
		{"suffix must align on a label", "xsub.example.com", "-"},
		{"suffix must align on a label (**)", "xself.example.com", "-"},
		{"two trailing dots", "api.example.com..", "-"},
		{"NUL", "api.example.com\x00.evil.com", "-"},
		{"NUL at the end", "api.example.com\x00", "-"},
		{"space", "api.example.com evil", "-"},
		{"slash", "api.example.com/x", "-"},
		{"port", "api.example.com:443", "-"},
		{"empty label", "api..example.com", "-"},
		{"leading dot", ".api.example.com", "-"},
		{"empty", "", "-"},
		{"label too long", strings.Repeat("a", 64) + ".sub.example.com", "-"},
		{"name too long", strings.Repeat("a.", 130) + "sub.example.com", "-"},
		{"non-ASCII", "äpi.example.com", "-"},
		{"punycode taken as is", "xn--4ca.sub.example.com", "sub"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nm := p.MatchName(tt.host)
			if got := ruleName(nm.Rule); got != tt.want || nm.Allowed != (tt.want != "-") {
				t.Fatalf("MatchName(%q) = %s allowed=%v, want %s", tt.host, got, nm.Allowed, tt.want)
			}
			cm := p.MatchConn(tt.host, 443)
			if got := ruleName(cm.Rule); got != tt.want {
				t.Fatalf("MatchConn(%q) = %s, want %s", tt.host, got, tt.want)
			}
			rm := p.MatchRequest(tt.host, 443, "GET", "/")
			if got := ruleName(rm.Rule); got != tt.want || rm.Allowed != (tt.want != "-") {
				t.Fatalf("MatchRequest(%q) = %s allowed=%v, want %s", tt.host, got, rm.Allowed, tt.want)
			}
		})
	}
}

// precedencePolicy exercises every row of the precedence table.
const precedencePolicy = `version: 1
rules:
  # Row 1: exact beats wildcard, longer suffix beats shorter.
  - {name: corp-any, hosts: ["**.corp.example"]}
  - {name: corp-api-deny, hosts: ["*.api.corp.example"], action: deny}
  - {name: corp-api-public, hosts: [public.api.corp.example]}
  # Row 2: exact beats **.self for the bare name.
  - {name: self-deny, hosts: ["**.self.example"], action: deny}
  - {name: self-exact, hosts: [self.example]}
  # Row 3: deny beats allow at equal specificity: equally specific paths.
  - {name: eq-allow, hosts: [eq.example], paths: ["/a/*"]}
  - {name: eq-deny, hosts: [eq.example], paths: ["/*/b"], action: deny}
  # Ports make a rule more specific than one for any port.
  - {name: pt-allow, hosts: [pt.example]}
  - {name: pt-deny, hosts: [pt.example], ports: [22], action: deny}
  # Row 4: * and ** of the same suffix are equally specific: deny wins.
  - {name: tie-allow, hosts: ["*.tie.example"]}
  - {name: tie-deny, hosts: ["**.tie.example"], action: deny}
  # Row 5: within a host, the most specific path wins.
  - {name: repo-read, hosts: [git.example], paths: ["/repos/**"]}
  - {name: repo-admin-deny, hosts: [git.example], paths: ["/repos/*/admin/**"], action: deny}
  - {name: repo-admin-ok, hosts: [git.example], paths: ["/repos/ok/admin/settings"]}
  - {name: repo-one, hosts: [git.example], paths: ["/repos/*"], methods: [GET]}
  # Row 6: at equal path, a rule naming methods beats one that does not;
  # a method rule without paths makes the connection need interception.
  - {name: m-all, hosts: [m.example]}
  - {name: m-no-delete, hosts: [m.example], methods: [DELETE], action: deny}
  # Row 7: the more specific host decides even when it only denies some
  # paths: other paths fall back to less specific rules.
  - {name: shop-any, hosts: ["*.shop.example"]}
  - {name: shop-admin, hosts: [www.shop.example], paths: ["/admin/**"], action: deny}
  # Row 8: a deny on a more specific host beats an allow on a wildcard.
  - {name: cdn-any, hosts: ["*.cdn.example"]}
  - {name: cdn-bad, hosts: [bad.cdn.example], action: deny}
  # Row 9: ports restrict; hosts without ports allow any port.
  - {name: db-web, hosts: [db.example], ports: [443, 8443]}
  # CIDRs: longest prefix wins, deny wins at equal length.
  - {name: net-allow, cidrs: [10.0.0.0/8]}
  - {name: net-deny, cidrs: [10.1.0.0/16], action: deny}
  - {name: net-host, cidrs: [10.1.2.3], ports: [5432]}
  - {name: net6, cidrs: ["fd00::/64"], paths: ["/v1/*"]}
`

func TestPrecedenceRequests(t *testing.T) {
	p := mustParse(t, precedencePolicy)
	tests := []struct {
		name   string
		host   string
		port   uint16
		method string
		path   string
		rule   string
		allow  bool
		reason string // substring of the refusal reason
	}{
		{"wildcard allows", "x.corp.example", 443, "GET", "/", "corp-any", true, ""},
		{"** allows the bare suffix", "corp.example", 443, "GET", "/", "corp-any", true, ""},
		{"longer suffix deny beats shorter allow", "x.api.corp.example", 443, "GET", "/", "corp-api-deny", false, "rule corp-api-deny denies GET x.api.corp.example/"},
		{"exact allow beats wildcard deny", "public.api.corp.example", 443, "GET", "/", "corp-api-public", true, ""},
		{"*.x does not cover x: falls back to **.corp", "api.corp.example", 443, "GET", "/", "corp-any", true, ""},
		{"exact beats **.self", "self.example", 443, "GET", "/", "self-exact", true, ""},
		{"**.self below", "a.self.example", 443, "GET", "/", "self-deny", false, "denies"},
		{"equal path specificity: deny wins", "eq.example", 443, "GET", "/a/b", "eq-deny", false, "rule eq-deny denies"},
		{"equal path specificity: allow alone", "eq.example", 443, "GET", "/a/c", "eq-allow", true, ""},
		{"port-restricted deny wins at its port", "pt.example", 22, "GET", "/", "pt-deny", false, "denies"},
		{"other ports allowed", "pt.example", 443, "GET", "/", "pt-allow", true, ""},
		{"same suffix * vs **: deny wins", "a.tie.example", 443, "GET", "/", "tie-deny", false, "denies"},
		{"** alone for the bare suffix", "tie.example", 443, "GET", "/", "tie-deny", false, "denies"},
		{"path: ** allows deep", "git.example", 443, "POST", "/repos/a/b/c", "repo-read", true, ""},
		{"path: more specific deny", "git.example", 443, "GET", "/repos/x/admin/users", "repo-admin-deny", false, "denies"},
		{"path: literal beats glob deny", "git.example", 443, "GET", "/repos/ok/admin/settings", "repo-admin-ok", true, ""},
		{"path: * beats ** with methods", "git.example", 443, "GET", "/repos/x", "repo-one", true, ""},
		{"path: method mismatch falls to **", "git.example", 443, "PUT", "/repos/x", "repo-read", true, ""},
		{"path: no match refused", "git.example", 443, "GET", "/users", "-", false, "no rule allows GET git.example/users on port 443; rule repo-read allows only paths /repos/**"},
		{"query ignored", "git.example", 443, "GET", "/repos/x/admin/users?x=/repos", "repo-admin-deny", false, "denies"},
		{"empty path is /", "m.example", 443, "GET", "", "m-all", true, ""},
		{"methods rule beats plain rule", "m.example", 443, "DELETE", "/x", "m-no-delete", false, "denies"},
		{"methods compared exactly", "m.example", 443, "delete", "/x", "m-all", true, ""},
		{"fallback to wildcard for other paths", "www.shop.example", 443, "GET", "/cart", "shop-any", true, ""},
		{"specific host deny on its paths", "www.shop.example", 443, "GET", "/admin/x", "shop-admin", false, "denies"},
		{"specific host deny beats wildcard allow", "bad.cdn.example", 443, "GET", "/", "cdn-bad", false, "denies"},
		{"sibling of the denied host", "good.cdn.example", 443, "GET", "/", "cdn-any", true, ""},
		{"port allowed", "db.example", 8443, "GET", "/", "db-web", true, ""},
		{"port refused", "db.example", 5432, "GET", "/", "-", false, "rule db-web allows only ports 443, 8443"},
		{"unmatched host", "nowhere.example", 443, "GET", "/", "-", false, "no rule allows GET nowhere.example/ on port 443"},
		{"invalid host", "a b", 443, "GET", "/", "-", false, "not a valid host name"},
		{"cidr allow", "10.9.9.9", 80, "GET", "/", "net-allow", true, ""},
		{"cidr longer deny", "10.1.9.9", 80, "GET", "/", "net-deny", false, "denies"},
		{"cidr host longest", "10.1.2.3", 5432, "GET", "/", "net-host", true, ""},
		{"cidr host other port", "10.1.2.3", 80, "GET", "/", "net-deny", false, "denies"},
		{"cidr v6 with path", "[fd00::5]", 80, "GET", "/v1/x", "net6", true, ""},
		{"cidr v6 path refused", "fd00::5", 80, "GET", "/v2/x", "-", false, "allows only paths /v1/*"},
		{"cidr miss", "192.0.2.1", 80, "GET", "/", "-", false, "no rule allows"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := p.MatchRequest(tt.host, tt.port, tt.method, tt.path)
			if ruleName(m.Rule) != tt.rule || m.Allowed != tt.allow {
				t.Fatalf("MatchRequest(%s %s:%d %s) = rule %s allowed %v (%s), want %s %v", tt.method, tt.host, tt.port, tt.path, ruleName(m.Rule), m.Allowed, m.Reason, tt.rule, tt.allow)
			}
			if !tt.allow && !strings.Contains(m.Reason, tt.reason) {
				t.Fatalf("reason %q, want %q", m.Reason, tt.reason)
			}
			if tt.allow && m.Reason != "" {
				t.Fatalf("reason on allow: %q", m.Reason)
			}
		})
	}
}

func TestPrecedenceConnections(t *testing.T) {
	p := mustParse(t, precedencePolicy+`
  - name: hdr
    hosts: [hdr.example]
    headers: [{name: Authorization, type: secret, value: "Bearer {T}"}]
  - {name: cond-deny-only, hosts: [cd.example], methods: [POST], action: deny}
  - {name: direct-net, cidrs: [192.168.0.0/16], direct: true}
`)
	tests := []struct {
		host    string
		port    uint16
		verdict Verdict
		rule    string
	}{
		{"x.corp.example", 443, VerdictSplice, "corp-any"},
		{"x.api.corp.example", 443, VerdictDeny, "corp-api-deny"},
		{"public.api.corp.example", 443, VerdictSplice, "corp-api-public"},
		{"eq.example", 443, VerdictIntercept, "eq-allow"},
		{"pt.example", 22, VerdictDeny, "pt-deny"},
		{"pt.example", 443, VerdictSplice, "pt-allow"},
		{"git.example", 443, VerdictIntercept, "repo-read"},     // only path rules: intercept
		{"m.example", 443, VerdictIntercept, "m-all"},           // a method deny above an allow
		{"www.shop.example", 443, VerdictIntercept, "shop-any"}, // a path deny above an allow
		{"bad.cdn.example", 443, VerdictDeny, "cdn-bad"},
		{"db.example", 443, VerdictSplice, "db-web"},
		{"db.example", 22, VerdictDeny, "-"},
		{"hdr.example", 443, VerdictIntercept, "hdr"},
		{"cd.example", 443, VerdictDeny, "-"}, // only a conditional deny: nothing could be allowed
		{"nowhere.example", 443, VerdictDeny, "-"},
		{"", 443, VerdictDeny, "-"},
		{"bad\x00.example", 443, VerdictDeny, "-"},
		{"10.9.9.9", 80, VerdictSplice, "net-allow"}, // IP literal: the CIDR rules
		{"10.1.9.9", 80, VerdictDeny, "net-deny"},
		{"fd00::1", 80, VerdictIntercept, "net6"},
	}
	for _, tt := range tests {
		m := p.MatchConn(tt.host, tt.port)
		if m.Verdict != tt.verdict || ruleName(m.Rule) != tt.rule {
			t.Errorf("MatchConn(%q, %d) = %v %s, want %v %s", tt.host, tt.port, m.Verdict, ruleName(m.Rule), tt.verdict, tt.rule)
		}
	}
	addrs := []struct {
		addr    string
		port    uint16
		verdict Verdict
		rule    string
	}{
		{"10.9.9.9", 1, VerdictSplice, "net-allow"},
		{"::ffff:10.9.9.9", 1, VerdictSplice, "net-allow"}, // v4-mapped is IPv4
		{"10.1.0.1", 1, VerdictDeny, "net-deny"},
		{"10.1.2.3", 5432, VerdictSplice, "net-host"},
		{"10.1.2.3", 5433, VerdictDeny, "net-deny"},
		{"fd00::1", 443, VerdictIntercept, "net6"},
		{"fd00:0:0:1::1", 443, VerdictDeny, "-"},
		{"192.168.1.1", 22, VerdictSplice, "direct-net"},
		{"127.0.0.1", 80, VerdictDeny, "-"},
	}
	for _, tt := range addrs {
		m := p.MatchAddr(netip.MustParseAddr(tt.addr), tt.port)
		if m.Verdict != tt.verdict || ruleName(m.Rule) != tt.rule {
			t.Errorf("MatchAddr(%s, %d) = %v %s, want %v %s", tt.addr, tt.port, m.Verdict, ruleName(m.Rule), tt.verdict, tt.rule)
		}
	}
	if m := p.MatchAddr(netip.Addr{}, 1); m.Verdict != VerdictDeny {
		t.Errorf("zero addr: %+v", m)
	}
}

func TestMatchName(t *testing.T) {
	p := mustParse(t, `version: 1
rules:
  - {name: npm, hosts: [registry.npmjs.org], remap: "npm.mirror.internal:8443", methods: [GET]}
  - {name: npm-no-put, hosts: [registry.npmjs.org], methods: [PUT], action: deny}
  - {name: ssh-deny, hosts: ["*.example.com"], ports: [22], action: deny}
  - {name: web, hosts: ["**.example.com"]}
  - {name: block, hosts: [ads.example.com], action: deny}
  - {name: path-only, hosts: [api.example.com], paths: ["/v1/**"]}
  - {name: direct, hosts: [db.internal], direct: true}
  - {name: cidr-only, cidrs: [10.0.0.0/8]}
`)
	tests := []struct {
		name    string
		allowed bool
		rule    string
		remap   string
		direct  bool
	}{
		{"registry.npmjs.org", true, "npm", "npm.mirror.internal:8443", false},
		{"REGISTRY.npmjs.org.", true, "npm", "npm.mirror.internal:8443", false},
		{"www.example.com", true, "web", "", false},    // the port-22 deny does not stop the name
		{"example.com", true, "web", "", false},        // ** covers the bare name
		{"ads.example.com", false, "block", "", false}, // an unconditional deny does
		{"api.example.com", true, "path-only", "", false},
		{"db.internal", true, "direct", "", true},
		{"x.db.internal", false, "-", "", false},
		{"10.in-addr.arpa", false, "-", "", false},
		{"evil.com", false, "-", "", false},
		{"ads.example.com\x00", false, "-", "", false},
	}
	for _, tt := range tests {
		m := p.MatchName(tt.name)
		remap := ""
		if m.Remap != nil {
			remap = m.Remap.Host
			if m.Remap.Port != 0 {
				remap += ":" + itoa16(m.Remap.Port)
			}
		}
		if m.Allowed != tt.allowed || ruleName(m.Rule) != tt.rule || remap != tt.remap || m.Direct != tt.direct {
			t.Errorf("MatchName(%q) = %v %s remap %q direct %v, want %v %s %q %v", tt.name, m.Allowed, ruleName(m.Rule), remap, m.Direct, tt.allowed, tt.rule, tt.remap, tt.direct)
		}
	}
	var nilPolicy *Policy
	if nilPolicy.MatchName("x.com").Allowed || nilPolicy.MatchConn("x.com", 1).Verdict != VerdictDeny || nilPolicy.MatchRequest("x", 1, "GET", "/").Allowed || nilPolicy.StaticCIDRs() != nil {
		t.Error("a nil policy allows")
	}
}

func itoa16(v uint16) string { return joinPorts([]uint16{v}) }

func TestGlob(t *testing.T) {
	tests := []struct {
		pat, path string
		want      bool
	}{
		{"/user", "/user", true},
		{"/user", "/user/", false},
		{"/user", "/users", false},
		{"/repos/*", "/repos/x", true},
		{"/repos/*", "/repos/", true},
		{"/repos/*", "/repos/x/y", false},
		{"/repos/*", "/repos", false},
		{"/repos/**", "/repos", true},
		{"/repos/**", "/repos/a/b/c", true},
		{"/repos/**", "/reposx", false},
		{"/**", "/", true},
		{"/**", "/a/b", true},
		{"/**/b", "/b", true},
		{"/**/b", "/a/x/b", true},
		{"/**/b", "/a/x/b/c", false},
		{"/a/**/b/**/c", "/a/1/2/b/3/c", true},
		{"/a/**/b/**/c", "/a/b/c", true},
		{"/a/**/b/**/c", "/a/c/b", false},
		{"/v*/models", "/v1/models", true},
		{"/v*/models", "/v1/x/models", false},
		{"/*.tgz", "/lodash-4.17.21.tgz", true},
		{"/*.tgz", "/lodash.tar", false},
		{"/a*b*c", "/aXbYc", true},
		{"/a*b*c", "/aXbY", false},
		{"/-/*/**", "/-/npm/v1/security", true},
		{"/x", "", false},
		{"/**", "", false},
		{"/**", "relative", false},
	}
	for _, tt := range tests {
		g, msg := compileGlob(tt.pat)
		if msg != "" {
			t.Fatalf("%s: %s", tt.pat, msg)
		}
		if got := g.match(tt.path); got != tt.want {
			t.Errorf("%q matches %q = %v, want %v", tt.pat, tt.path, got, tt.want)
		}
	}
	// Specificity: literal > more literal characters > * > **.
	spec := func(s string) int { g, _ := compileGlob(s); return g.spec }
	if !(spec("/repos/x") > spec("/repos/*/admin") && spec("/repos/*/admin") > spec("/repos/*") && spec("/repos/*") > spec("/repos/**") && spec("/repos/**") > spec("/**")) {
		t.Error("specificity order broken")
	}
}

func TestHeaders(t *testing.T) {
	const secretValue = "sk-live-DO-NOT-PRINT"
	lookup := func(name string) (string, error) {
		if name == "MISSING" {
			return "", errNotFound
		}
		return secretValue + "-" + name, nil
	}
	tests := []struct {
		name       string
		h          Header
		wantRender string
		wantErr    string
		redacted   string
	}{
		{"secret", Header{Name: "Authorization", Type: HeaderSecret, Value: "Bearer {A}", Secrets: []string{"A"}}, "Bearer " + secretValue + "-A", "", "Bearer <secret:A>"},
		{"two secrets", Header{Name: "X-Auth", Type: HeaderSecret, Value: "{A}:{B}", Secrets: []string{"A", "B"}}, secretValue + "-A:" + secretValue + "-B", "", "<secret:A>:<secret:B>"},
		{"missing secret", Header{Name: "Authorization", Type: HeaderSecret, Value: "Bearer {MISSING}", Secrets: []string{"MISSING"}}, "", "header Authorization: secret MISSING: not found", "Bearer <secret:MISSING>"},
		{"plaintext", Header{Name: "X-Version", Type: HeaderPlaintext, Value: "2022-11-28"}, "2022-11-28", "", "2022-11-28"},
		{"plaintext credential", Header{Name: "authorization", Type: HeaderPlaintext, Value: "Basic abc"}, "Basic abc", "", "<plaintext>"},
		{"opaque", Header{Name: "X-Api-Key", Type: HeaderOpaque, Value: "write-only"}, "write-only", "", "<opaque>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.h.Render(lookup)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("err = %v, want %s", err, tt.wantErr)
				}
			} else if err != nil || got != tt.wantRender {
				t.Fatalf("Render = %q, %v", got, err)
			}
			if r := tt.h.Redacted(); r != tt.redacted || strings.Contains(r, secretValue) {
				t.Fatalf("Redacted = %q, want %q", r, tt.redacted)
			}
		})
	}
	h := Header{Name: "A", Type: HeaderSecret, Value: "{X}", Secrets: []string{"X"}}
	if _, err := h.Render(func(string) (string, error) { return "a\r\nInjected: 1", nil }); err == nil {
		t.Fatal("a secret with CRLF was rendered")
	}
}

var errNotFound = errorString("not found")

type errorString string

func (e errorString) Error() string { return string(e) }
