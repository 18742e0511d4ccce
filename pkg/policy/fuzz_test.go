package policy

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var problemLine = regexp.MustCompile(`^f\.yaml:\d+:\d+: `)

// FuzzParse: Parse never panics, every problem carries a position, and a
// policy that parses answers every matcher question without panicking.
// Seeds: testdata/fuzz/FuzzParse plus every example and bad policy.
func FuzzParse(f *testing.F) {
	for _, pat := range []string{"../../testdata/policies/*.yaml", "../../testdata/policies/*/*.yaml"} {
		files, _ := filepath.Glob(pat)
		for _, file := range files {
			if b, err := os.ReadFile(file); err == nil {
				f.Add(b)
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("f.yaml", data)
		if err != nil {
			var errs Errors
			if !errors.As(err, &errs) || len(errs.Errs()) == 0 {
				t.Fatalf("error %T without problems: %v", err, err)
			}
			for _, pr := range errs {
				if !problemLine.MatchString(pr.String()) {
					t.Fatalf("problem without position: %q", pr.String())
				}
			}
			return
		}
		names := map[string]bool{}
		for _, r := range p.Rules {
			if names[r.Name] {
				t.Fatalf("duplicate rule name %q accepted", r.Name)
			}
			names[r.Name] = true
			for _, h := range r.Hosts {
				name := strings.TrimPrefix(strings.TrimPrefix(h, "**."), "*.")
				for _, n := range []string{name, "x." + name, strings.ToUpper(name) + ".", name + "\x00"} {
					p.MatchName(n)
					p.MatchConn(n, 443)
					for _, path := range r.Paths {
						p.MatchRequest(n, 443, "GET", path)
						p.MatchRequest(n, 443, "GET", strings.ReplaceAll(path, "*", "a/b"))
					}
					p.MatchRequest(n, 80, "POST", "/")
				}
				nm := p.MatchName(name + "\x00")
				if nm.Allowed || nm.Rule != nil {
					t.Fatalf("a name with NUL matched %v", nm)
				}
			}
			for _, c := range r.CIDRs {
				p.MatchAddr(c.Addr(), 1)
				p.MatchRequest(c.Addr().String(), 1, "GET", "/")
			}
			for _, h := range r.Headers {
				red := h.Redacted()
				if h.Type == HeaderOpaque && red != "<opaque>" {
					t.Fatalf("opaque shown: %q", red)
				}
				if _, err := h.Render(func(string) (string, error) { return "v", nil }); err != nil {
					t.Fatalf("render %+v: %v", h, err)
				}
			}
		}
		p.StaticCIDRs()
		p.MatchAddr(netip.MustParseAddr("::ffff:10.0.0.1"), 1)
		p.Explain("GET", "https://"+string(data[:min(len(data), 40)]))
	})
}

// FuzzMatchName: any byte string is either a valid name, matched exactly
// like its normalised form, or matches nothing; no lookup panics.
func FuzzMatchName(f *testing.F) {
	p, err := Parse("f.yaml", []byte(`version: 1
rules:
  - {name: exact, hosts: [api.example.com]}
  - {name: sub, hosts: ["*.example.com"], paths: ["/v1/**"]}
  - {name: self, hosts: ["**.example.org"], ports: [443]}
  - {name: deny, hosts: [bad.example.com], action: deny}
  - {name: net, cidrs: [10.0.0.0/8, "fd00::/8"]}
`))
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{"api.example.com", "API.EXAMPLE.COM.", "a.b.example.com", "example.org", "bad.example.com\x00", "10.1.2.3", "[fd00::1]", "..", "a..b", "xn--4ca.example.com", "a.example.com:443", "10.1.2.3."} {
		f.Add(s, "/v1/x")
	}
	f.Fuzz(func(t *testing.T, name, path string) {
		nm := p.MatchName(name)
		p.MatchConn(name, 443)
		p.MatchRequest(name, 443, "GET", path)
		norm, ok := NormalizeName(name)
		if !ok {
			if nm.Allowed || nm.Rule != nil {
				t.Fatalf("invalid name %q matched %s", name, nm.Rule.Name)
			}
			return
		}
		if strings.ContainsAny(norm, "\x00 /:") {
			t.Fatalf("NormalizeName(%q) = %q", name, norm)
		}
		if p.MatchName(norm) != nm {
			t.Fatalf("MatchName(%q) differs from MatchName(%q)", name, norm)
		}
		if _, ip := ipLiteral(norm); ip {
			// "10.1.2.3." is a name (no IP literal has a trailing dot) and
			// matches nothing, while "10.1.2.3" is matched by the cidrs.
			return
		}
		// Reasons quote the host as given; the decision must not differ.
		a, b := p.MatchRequest(name, 443, "GET", path), p.MatchRequest(norm, 443, "GET", path)
		if a.Allowed != b.Allowed || a.Rule != b.Rule {
			t.Fatalf("MatchRequest differs for %q and %q", name, norm)
		}
		if p.MatchConn(name, 443) != p.MatchConn(norm, 443) {
			t.Fatalf("MatchConn differs for %q and %q", name, norm)
		}
	})
}
