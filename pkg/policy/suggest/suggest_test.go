package suggest

import (
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/policy"
)

func TestSuggestSample(t *testing.T) {
	evs, err := audit.ReadFile("../../../testdata/audit/sample.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	res, err := Suggest(evs, Options{Source: "sample.jsonl"})
	if err != nil {
		t.Fatal(err)
	}
	if testing.Verbose() {
		os.Stdout.Write(res.YAML)
	}
	p := res.Policy
	for _, c := range []struct {
		host, method, path string
		port               uint16
		want               bool
	}{
		{"api.openai.com", "POST", "/v1/chat/completions", 443, true},
		{"api.openai.com", "GET", "/v1/models", 443, true},
		{"api.openai.com", "DELETE", "/v1/models", 443, false},
		{"pypi.org", "GET", "/simple/requests/", 443, true}, // would_deny in the log
		{"api.github.com", "GET", "/orgs/acme", 443, false}, // denied in the log
		{"example.com", "GET", "/", 443, false},
	} {
		if got := p.MatchRequest(c.host, c.port, c.method, c.path).Allowed; got != c.want {
			t.Errorf("%s %s%s: allowed %v, want %v\n%s", c.method, c.host, c.path, got, c.want, res.YAML)
		}
	}
	if m := p.MatchConn("10.0.0.5", 5432); m.Verdict != policy.VerdictDeny {
		t.Errorf("a refused connection is allowed: %+v", m)
	}
	y := string(res.YAML)
	if !strings.Contains(y, `{name: "Authorization", type: secret, value: "{API_OPENAI_COM_AUTHORIZATION}"}`) {
		t.Errorf("the injected header is not kept with a placeholder:\n%s", y)
	}
}

func ev(kind, decision, host, method, path, exe string) audit.Event {
	e := audit.Event{Kind: kind, Decision: decision, Sandbox: "sb", Exe: exe, Method: method, Path: path}
	switch kind {
	case audit.KindConn:
		e.SNI, e.Dst = host, "192.0.2.1:443"
	case audit.KindDNS:
		e.QName = host + "."
	default:
		e.Host = host
	}
	return e
}

func TestSuggestCollapsesAndProcesses(t *testing.T) {
	var evs []audit.Event
	for _, p := range []string{"/repos/a/issues", "/repos/b/issues", "/repos/c/issues", "/repos/d/issues", "/user"} {
		evs = append(evs, ev(audit.KindHTTP, audit.DecisionWouldDeny, "api.test", "GET", p, "/usr/bin/curl"))
	}
	evs = append(evs, ev(audit.KindConn, audit.DecisionWouldDeny, "api.test", "", "", "/usr/bin/curl"))
	evs = append(evs, ev(audit.KindConn, audit.DecisionSplice, "git.test", "", "", "/usr/lib/git-core/git-remote-http"))
	evs = append(evs, ev(audit.KindConn, audit.DecisionSplice, "shared.test", "", "", "/usr/bin/curl"))
	evs = append(evs, ev(audit.KindConn, audit.DecisionSplice, "shared.test", "", "", "/usr/bin/wget"))
	evs = append(evs, ev(audit.KindDNS, audit.DecisionAllow, "resolved.test", "", "", ""))
	evs = append(evs, ev(audit.KindConn, audit.DecisionDeny, "refused.test", "", "", "/usr/bin/curl"))
	other := ev(audit.KindConn, audit.DecisionSplice, "other-sandbox.test", "", "", "")
	other.Sandbox = "other"
	evs = append(evs, other)
	res, err := Suggest(evs, Options{Sandbox: "sb"})
	if err != nil {
		t.Fatal(err)
	}
	y := string(res.YAML)
	for _, want := range []string{
		`paths: ["/repos/*/issues", "/user"]`,
		`methods: [GET]`,
		`ports: [443]`,
		`processes: ["/usr/bin/curl"]`,
		`processes: ["/usr/lib/git-core/git-remote-http"]`,
		`hosts: ["resolved.test"]`,
	} {
		if !strings.Contains(y, want) {
			t.Errorf("missing %s in\n%s", want, y)
		}
	}
	if strings.Contains(y, "refused.test") || strings.Contains(y, "other-sandbox.test") {
		t.Errorf("a refused or other sandbox's host is allowed:\n%s", y)
	}
	if strings.Count(y, "processes:") != 2 {
		t.Errorf("shared.test is used by two executables: no processes:\n%s", y)
	}
	p := res.Policy
	if !p.ForProcess("/usr/bin/curl").MatchRequest("api.test", 443, "GET", "/repos/zz/issues").Allowed {
		t.Error("the collapsed glob does not allow a sibling")
	}
	if p.ForProcess("/usr/bin/wget").MatchRequest("api.test", 443, "GET", "/user").Allowed {
		t.Error("another executable may use api.test")
	}
	if _, err := Suggest(evs[len(evs)-2:], Options{Sandbox: "sb"}); err == nil {
		t.Error("a log with nothing allowed gave a policy")
	}
}

func TestCollapse(t *testing.T) {
	for _, c := range []struct {
		in, want []string
	}{
		{[]string{"/a", "/b"}, []string{"/a", "/b"}},
		{[]string{"/v1/a", "/v1/b", "/v1/c", "/v1/d", "/v2"}, []string{"/v1/*", "/v2"}},
		{[]string{"/r/1/x", "/r/2/x", "/r/3/x", "/r/4/x"}, []string{"/r/*/x"}},
	} {
		got := collapse(c.in)
		if strings.Join(got, " ") != strings.Join(c.want, " ") {
			t.Errorf("collapse(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

// TestSuggestAddressAndPorts: a connection without a name becomes a cidrs
// rule for its address and port; a name used on two ports keeps both.
func TestSuggestAddressAndPorts(t *testing.T) {
	evs := []audit.Event{
		{Kind: audit.KindConn, Decision: audit.DecisionWouldDeny, Dst: "10.0.0.5:5432", Proto: "tcp", Exe: "/usr/bin/psql"},
		{Kind: audit.KindConn, Decision: audit.DecisionSplice, Dst: "192.0.2.1:443", SNI: "api.test"},
		{Kind: audit.KindConn, Decision: audit.DecisionSplice, Dst: "192.0.2.1:8443", SNI: "api.test"},
	}
	res, err := Suggest(evs, Options{})
	if err != nil {
		t.Fatal(err)
	}
	y := string(res.YAML)
	for _, want := range []string{`cidrs: ["10.0.0.5"]`, `ports: [5432]`, `ports: [443, 8443]`, `processes: ["/usr/bin/psql"]`} {
		if !strings.Contains(y, want) {
			t.Errorf("missing %s in\n%s", want, y)
		}
	}
	p := res.Policy
	if m := p.ForProcess("/usr/bin/psql").MatchAddr(netip.MustParseAddr("10.0.0.5"), 5432); m.Verdict == policy.VerdictDeny {
		t.Errorf("10.0.0.5:5432 refused: %+v", m)
	}
	if m := p.ForProcess("/usr/bin/psql").MatchAddr(netip.MustParseAddr("10.0.0.5"), 22); m.Verdict != policy.VerdictDeny {
		t.Errorf("10.0.0.5:22 allowed: %+v", m)
	}
	// api.test has no executable recorded: no processes: for it.
	if strings.Count(y, "processes:") != 1 {
		t.Errorf("processes: for a host without a recorded executable:\n%s", y)
	}
}
