package audit

import (
	"net/http"
	"strings"
	"testing"
)

// Distinctive values: if one appears in an output, redaction failed.
const (
	secretA = "sk-live-7f3a9c1e5b2d4068QQ"
	secretB = "ghp_ZZ9x8y7w6v5u4t3s2r1q"
	secretC = "s3cr3t-c00kie-VAL"
)

func TestRedactPath(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"no query", "/v1/models", "/v1/models"},
		{"one value", "/v1/x?key=" + secretA, "/v1/x?key=REDACTED"},
		{"several", "/search?q=" + secretA + "&token=" + secretB + "&page=2", "/search?q=REDACTED&token=REDACTED&page=REDACTED"},
		{"bare key kept", "/x?debug&k=" + secretA, "/x?debug&k=REDACTED"},
		{"empty value", "/x?k=", "/x?k=REDACTED"},
		{"empty key", "/x?=" + secretA, "/x?=REDACTED"},
		{"empty query", "/x?", "/x?"},
		{"semicolon stays inside the value", "/x?a=1;b=" + secretA, "/x?a=REDACTED"},
		{"encoded equals in value", "/x?sig=" + secretA + "%3D%3D", "/x?sig=REDACTED"},
		{"value with equals", "/x?jwt=a=b=" + secretA, "/x?jwt=REDACTED"},
		{"fragment dropped", "/x?a=1#frag-" + secretA, "/x?a=REDACTED"},
		{"fragment without query", "/doc#" + secretA, "/doc"},
		{"absolute form user info", "http://user:" + secretA + "@example.com/p?t=" + secretB, "http://example.com/p?t=REDACTED"},
		{"absolute form no user info", "https://example.com:8443/p?t=" + secretB, "https://example.com:8443/p?t=REDACTED"},
		{"at sign in path is not user info", "/u/@" + "scope/pkg", "/u/@scope/pkg"},
		{"scheme-like text in query", "/x?u=http://a:" + secretA + "@h/", "/x?u=REDACTED"},
		{"empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := RedactPath(tt.in)
			if got != tt.want {
				t.Fatalf("RedactPath(%q) = %q, want %q", tt.in, got, tt.want)
			}
			for _, s := range []string{secretA, secretB} {
				if strings.Contains(got, s) {
					t.Fatalf("RedactPath(%q) = %q leaks %q", tt.in, got, s)
				}
			}
		})
	}
}

func TestRedactHeaders(t *testing.T) {
	h := http.Header{
		"Authorization":       {"Bearer " + secretA},
		"Proxy-Authorization": {"Basic " + secretB},
		"Cookie":              {"session=" + secretC},
		"X-Api-Key":           {secretA},
		"X-Custom-Token":      {secretB},
		"Content-Type":        {"application/json"},
		"User-Agent":          {"curl/8.5.0"},
		"Accept":              {"*/*", "text/plain"},
		"x-lower-case":        {"plain-lower-value"},
	}
	tests := []struct {
		name  string
		allow []string
		kept  []string // header names whose values survive
	}{
		{"default allow-list", nil, []string{"Content-Type", "User-Agent", "Accept"}},
		{"explicit allow-list, case-insensitive", []string{"content-type", "X-LOWER-CASE"}, []string{"Content-Type", "x-lower-case"}},
		{"credential headers never kept", []string{"Authorization", "Cookie", "X-Api-Key", "Proxy-Authorization"}, nil},
		{"empty allow-list keeps nothing", []string{}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := RedactHeaders(h, tt.allow)
			if len(got) != len(h) {
				t.Fatalf("got %d headers, want %d (names are kept)", len(got), len(h))
			}
			kept := map[string]bool{}
			for _, k := range tt.kept {
				kept[k] = true
			}
			for name, vals := range h {
				gv := got[name]
				if len(gv) != len(vals) {
					t.Fatalf("%s: %d values, want %d", name, len(gv), len(vals))
				}
				for i := range vals {
					want := RedactedHeader
					if kept[name] {
						want = vals[i]
					}
					if gv[i] != want {
						t.Errorf("%s[%d] = %q, want %q", name, i, gv[i], want)
					}
				}
			}
			for name, vals := range got {
				for _, v := range vals {
					for _, s := range []string{secretA, secretB, secretC} {
						if strings.Contains(v, s) {
							t.Errorf("%s leaks %q", name, s)
						}
					}
				}
			}
		})
	}
	// The input is not modified.
	if h.Get("Authorization") != "Bearer "+secretA {
		t.Fatal("RedactHeaders modified its input")
	}
}

func TestHeaderNames(t *testing.T) {
	got := HeaderNames(http.Header{"x-b": {secretA}, "Authorization": {secretB}})
	if strings.Join(got, ",") != "Authorization,X-B" {
		t.Fatalf("HeaderNames = %v", got)
	}
}
