package policy

import (
	"errors"
	"strings"
	"testing"
)

func TestNormalizeTarget(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, target, host string
		path, match, query string
		wantErr            string
	}{
		{name: "root", target: "/", path: "/", match: "/"},
		{name: "plain", target: "/repos/o/r?x=1", path: "/repos/o/r", match: "/repos/o/r", query: "x=1"},
		{name: "trailing slash kept", target: "/repos/", path: "/repos/", match: "/repos/"},
		{name: "empty query dropped", target: "/a?", path: "/a", match: "/a"},
		{name: "unreserved decoded", target: "/%61dmin/%7Ex%2d", path: "/admin/~x-", match: "/admin/~x-"},
		{name: "escape hex upper-cased", target: "/a%3ab%c3%a9", path: "/a%3Ab%C3%A9", match: "/a:b\xc3\xa9"},
		{name: "space encoded kept", target: "/a%20b", path: "/a%20b", match: "/a b"},
		{name: "raw unsafe bytes escaped", target: "/a|b{c}\xc3\xa9", path: "/a%7Cb%7Bc%7D%C3%A9", match: "/a|b{c}\xc3\xa9"},
		{name: "percent alone", target: "/100%25", path: "/100%25", match: "/100%"},
		{name: "sub-delims raw", target: "/a:b@c!$&'()*+,=", path: "/a:b@c!$&'()*+,=", match: "/a:b@c!$&'()*+,="},
		{name: "query kept as sent", target: "/a?b=%2F&c=\\&d=?", path: "/a", match: "/a", query: "b=%2F&c=\\&d=?"},
		{name: "absolute-form", target: "https://API.test:8443/x?y", host: "api.test:8443", path: "/x", match: "/x", query: "y"},
		{name: "absolute-form no path", target: "http://api.test", host: "api.test", path: "/", match: "/"},
		{name: "absolute-form other host", target: "https://evil.test/x", host: "api.test", wantErr: `names "evil.test"`},
		{name: "absolute-form userinfo", target: "https://u@api.test/x", host: "api.test", wantErr: "user information"},
		{name: "asterisk", target: "*", wantErr: "asterisk"},
		{name: "not a path", target: "x/y", wantErr: "neither a path"},
		{name: "empty", target: "", wantErr: "empty request target"},
		{name: "double slash", target: "//admin/users", wantErr: "empty path segment"},
		{name: "inner double slash", target: "/repos//private/x", wantErr: "empty path segment"},
		{name: "dot", target: "/a/./b", wantErr: `"." path segment`},
		{name: "dotdot", target: "/a/../b", wantErr: `".." path segment`},
		{name: "dotdot last", target: "/a/..", wantErr: `".." path segment`},
		{name: "encoded dotdot", target: "/a/%2e%2E/b", wantErr: `".." path segment`},
		{name: "half encoded dot", target: "/a/.%2e", wantErr: `".." path segment`},
		{name: "dotdot semicolon", target: "/repos/..;/admin", wantErr: "';'"},
		{name: "matrix param", target: "/admin;v=1/users", wantErr: "';'"},
		{name: "encoded semicolon", target: "/admin%3bv=1", wantErr: "inside a path segment"},
		{name: "backslash", target: "/repos/..\\admin", wantErr: "'\\'"},
		{name: "encoded backslash", target: "/repos/..%5Cadmin", wantErr: "inside a path segment"},
		{name: "encoded slash", target: "/repos/a%2Fb", wantErr: "%2F"},
		{name: "encoded slash lower", target: "/repos/a%2fb", wantErr: "%2f"},
		{name: "encoded question mark", target: "/repos/x%3F/deeper", wantErr: "%3F"},
		{name: "encoded hash", target: "/repos/x%23y", wantErr: "%23"},
		{name: "raw hash", target: "/a#b", wantErr: "'#'"},
		{name: "invalid escape", target: "/a%zz", wantErr: "invalid percent-encoding"},
		{name: "truncated escape", target: "/a%4", wantErr: "invalid percent-encoding"},
		{name: "invalid escape in query", target: "/a?x=%g1", wantErr: "query: invalid percent-encoding"},
		{name: "double encoding", target: "/a%252e%252e/b", wantErr: "double percent-encoding"},
		{name: "double encoding, hex encoded", target: "/a%25%34%31", wantErr: "double percent-encoding %2541"},
		{name: "NUL", target: "/a\x00b", wantErr: "control byte"},
		{name: "encoded NUL", target: "/a%00b", wantErr: "control byte"},
		{name: "encoded NUL in query", target: "/a?b=%00", wantErr: "control byte"},
		{name: "encoded DEL", target: "/a%7f", wantErr: "control byte"},
		{name: "raw space", target: "/a b", wantErr: "space or control"},
		{name: "trailing encoded space", target: "/admin%20/x", wantErr: "begins or ends with a space"},
		{name: "leading encoded space", target: "/%20admin", wantErr: "begins or ends with a space"},
		{name: "tab", target: "/a\tb", wantErr: "control"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := tt.host
			if host == "" {
				host = "api.test"
			}
			got, err := NormalizeTarget(tt.target, host)
			if tt.wantErr != "" {
				var te *TargetError
				if err == nil || !errors.As(err, &te) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("NormalizeTarget(%q) = %+v, %v; want error %q", tt.target, got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("NormalizeTarget(%q): %v", tt.target, err)
			}
			if got.Path != tt.path || got.Match != tt.match || got.Query != tt.query {
				t.Fatalf("NormalizeTarget(%q) = %+v, want path %q match %q query %q", tt.target, got, tt.path, tt.match, tt.query)
			}
			again, err := NormalizeTarget(got.String(), host)
			if err != nil || again != got {
				t.Fatalf("not idempotent: %+v -> %+v, %v", got, again, err)
			}
		})
	}
}

func TestPrepareMethods(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, method, target string
		header               map[string][]string
		overrides            []string
		wantErr              string
	}{
		{name: "upper case", method: "DELETE", target: "/"},
		{name: "extension method", method: "M-SEARCH", target: "/"},
		{name: "lower case", method: "delete", target: "/", wantErr: "not in upper case"},
		{name: "mixed case", method: "Delete", target: "/", wantErr: "not in upper case"},
		{name: "not a token", method: "GE T", target: "/", wantErr: "not an HTTP method"},
		{name: "override header", method: "POST", target: "/", header: map[string][]string{"X-Http-Method-Override": {"delete"}}, overrides: []string{"DELETE"}},
		{name: "all override headers", method: "POST", target: "/", header: map[string][]string{
			"X-Http-Method-Override": {"PUT"}, "X-Method-Override": {"DELETE"}, "X-Http-Method": {"PATCH", "PUT"}}, overrides: []string{"PUT", "DELETE", "PATCH"}},
		{name: "override same as method", method: "POST", target: "/", header: map[string][]string{"X-Method-Override": {"POST"}}},
		{name: "override not a method", method: "POST", target: "/", header: map[string][]string{"X-Method-Override": {"DE LETE"}}, wantErr: "X-Method-Override header"},
		{name: "_method parameter", method: "POST", target: "/a?x=1&_method=DELETE", overrides: []string{"DELETE"}},
		{name: "_method encoded and lower", method: "GET", target: "/a?%5Fmethod=put;_METHOD=patch", overrides: []string{"PUT", "PATCH"}},
		{name: "_method empty ignored", method: "GET", target: "/a?_method=", overrides: nil},
		{name: "method-like parameter ignored", method: "GET", target: "/a?method=DELETE&x_method=DELETE", overrides: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pr, err := Prepare(Request{Method: tt.method, Target: tt.target, Host: "api.test", Header: tt.header})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, o := range pr.Overrides {
				got = append(got, o.Method)
			}
			if strings.Join(got, ",") != strings.Join(tt.overrides, ",") {
				t.Fatalf("overrides %v, want %v", got, tt.overrides)
			}
		})
	}
}

// TestMatchPrepared covers the path and method variants of the gate
// against the rules that would let them through an upstream that reads
// them another way.
func TestMatchPrepared(t *testing.T) {
	t.Parallel()
	p := mustParse(t, `version: 1
rules:
  - name: repos
    hosts: [api.test]
    paths: ["/repos/*", "/repos/**", "/admin/", "/Docs/**"]
  - name: no-private
    hosts: [api.test]
    paths: ["/repos/private/**"]
    action: deny
  - name: methods
    hosts: [m.test]
  - name: no-delete
    hosts: [m.test]
    methods: [DELETE]
    action: deny
  - name: no-admin
    hosts: [api.test]
    paths: ["/admin"]
    action: deny
  - name: folded
    hosts: [fold.test]
    paths: ["/Public/**"]
    case_insensitive_paths: true
  - name: folded-deny
    hosts: [fold.test]
    paths: ["/public/Secret/**"]
    action: deny
    case_insensitive_paths: true
  - name: one
    hosts: [one.test]
    paths: ["/repos/*"]
`)
	tests := []struct {
		name, host, method, target string
		header                     map[string][]string
		want                       string // "allow", "deny" (403) or "bad" (400)
		rule                       string
	}{
		{name: "allowed", host: "api.test", method: "GET", target: "/repos/x", want: "allow", rule: "repos"},
		{name: "deny subtree", host: "api.test", method: "GET", target: "/repos/private/x", want: "deny", rule: "no-private"},
		{name: "deny subtree root", host: "api.test", method: "GET", target: "/repos/private", want: "deny", rule: "no-private"},
		{name: "deny subtree trailing slash", host: "api.test", method: "GET", target: "/repos/private/", want: "deny", rule: "no-private"},
		{name: "deny via double slash", host: "api.test", method: "GET", target: "/repos//private/x", want: "bad"},
		{name: "deny via matrix", host: "api.test", method: "GET", target: "/repos/private;v=1/x", want: "bad"},
		{name: "deny via encoded unreserved", host: "api.test", method: "GET", target: "/repos/%70rivate/x", want: "deny", rule: "no-private"},
		{name: "dot-dot-semicolon", host: "api.test", method: "GET", target: "/repos/..;/admin", want: "bad"},
		{name: "backslash", host: "api.test", method: "GET", target: "/repos/..%5Cadmin", want: "bad"},
		{name: "encoded slash", host: "api.test", method: "GET", target: "/repos/private%2Fx", want: "bad"},
		{name: "exact deny", host: "api.test", method: "GET", target: "/admin", want: "deny", rule: "no-admin"},
		{name: "exact deny, trailing slash", host: "api.test", method: "GET", target: "/admin/", want: "deny", rule: "no-admin"},
		{name: "case-sensitive by default", host: "api.test", method: "GET", target: "/Admin", want: "deny"},
		{name: "case-sensitive allow", host: "api.test", method: "GET", target: "/docs/x", want: "deny"},
		{name: "case-sensitive allow exact", host: "api.test", method: "GET", target: "/Docs/x", want: "allow", rule: "repos"},
		{name: "folded allow", host: "fold.test", method: "GET", target: "/PUBLIC/x", want: "allow", rule: "folded"},
		{name: "folded deny", host: "fold.test", method: "GET", target: "/Public/SECRET/k", want: "deny", rule: "folded-deny"},
		{name: "folded deny, trailing slash", host: "fold.test", method: "GET", target: "/PUBLIC/secret/", want: "deny", rule: "folded-deny"},
		{name: "one segment", host: "one.test", method: "GET", target: "/repos/x", want: "allow", rule: "one"},
		{name: "one segment, trailing slash", host: "one.test", method: "GET", target: "/repos/x/", want: "deny"},
		{name: "encoded ? cut", host: "one.test", method: "GET", target: "/repos/x%3F/deeper", want: "bad"},
		{name: "real query", host: "one.test", method: "GET", target: "/repos/x?/deeper", want: "allow", rule: "one"},
		{name: "DELETE denied", host: "m.test", method: "DELETE", target: "/repos/x", want: "deny", rule: "no-delete"},
		{name: "delete", host: "m.test", method: "delete", target: "/repos/x", want: "bad"},
		{name: "Delete", host: "m.test", method: "Delete", target: "/repos/x", want: "bad"},
		{name: "X-HTTP-Method-Override", host: "m.test", method: "POST", target: "/repos/x", header: map[string][]string{"X-Http-Method-Override": {"DELETE"}}, want: "deny", rule: "no-delete"},
		{name: "X-Method-Override lower", host: "m.test", method: "POST", target: "/repos/x", header: map[string][]string{"X-Method-Override": {"delete"}}, want: "deny", rule: "no-delete"},
		{name: "X-HTTP-Method", host: "m.test", method: "GET", target: "/repos/x", header: map[string][]string{"X-Http-Method": {"DELETE"}}, want: "deny", rule: "no-delete"},
		{name: "_method", host: "m.test", method: "POST", target: "/repos/x?_method=DELETE", want: "deny", rule: "no-delete"},
		{name: "allowed override", host: "m.test", method: "POST", target: "/repos/x?_method=PUT", want: "allow", rule: "methods"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pr, err := Prepare(Request{Method: tt.method, Target: tt.target, Host: tt.host, Header: tt.header})
			got, rule := "bad", ""
			if err == nil {
				m := p.MatchPrepared(tt.host, 443, &pr)
				got, rule = "deny", nameOf(m.Rule)
				if m.Allowed {
					got = "allow"
				}
			}
			if got != tt.want || (tt.rule != "" && rule != tt.rule) {
				t.Fatalf("%s %s: %s (rule %q, err %v), want %s (rule %q)", tt.method, tt.target, got, rule, err, tt.want, tt.rule)
			}
		})
	}
}

// FuzzNormalizeTarget: the canonical form is a fixed point and never holds
// what an upstream could read as another path.
func FuzzNormalizeTarget(f *testing.F) {
	for _, s := range []string{"/", "/repos/o/r?x=1", "/a/%2e%2E/b", "/repos/..;/admin", "/repos/..%5Cadmin", "//admin",
		"/a%2Fb", "/x%3F/deeper", "/a%252e", "/a%25%34%31", "https://api.test/x", "/%61%7e%C3%A9", "/a b", "/a/./b/", "/100%25", "/a|b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		got, err := NormalizeTarget(target, "api.test")
		if err != nil {
			var te *TargetError
			if !errors.As(err, &te) {
				t.Fatalf("error %T", err)
			}
			return
		}
		p := got.Path
		if p == "" || p[0] != '/' || strings.Contains(p, "//") || strings.Contains(p, "\\") || strings.Contains(p, ";") ||
			strings.Contains(p, "%2F") || strings.Contains(p, "%3F") || strings.Contains(p, "%23") || strings.Contains(p, "%5C") ||
			doubleEscape(p) >= 0 {
			t.Fatalf("NormalizeTarget(%q) path %q", target, p)
		}
		for _, seg := range strings.Split(got.Match, "/") {
			if seg == "." || seg == ".." {
				t.Fatalf("NormalizeTarget(%q) has a dot segment: %q", target, got.Match)
			}
		}
		for i := 0; i < len(got.Match); i++ {
			if c := got.Match[i]; c < 0x20 || c == 0x7f || c == '?' || c == '#' {
				t.Fatalf("NormalizeTarget(%q) match %q holds %q", target, got.Match, c)
			}
		}
		again, err := NormalizeTarget(got.String(), "api.test")
		if err != nil || again != got {
			t.Fatalf("not idempotent: %q -> %+v -> %+v, %v", target, got, again, err)
		}
	})
}
