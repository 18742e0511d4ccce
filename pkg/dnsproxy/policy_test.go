package dnsproxy

import (
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/policy"
	"github.com/sluice-dev/sluice/pkg/testutil"
)

const realPolicy = `version: 1
ipv6: false
rules:
  - name: api
    hosts: [allowed.test, "*.cdn-ok.test"]
  - name: npm-mirror
    hosts: [registry.npmjs.org]
    remap: npm.mirror.internal
  - name: no-evil
    hosts: ["*.evil.test"]
    action: deny
`

func mustParse(t *testing.T, yaml string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("parsing the test policy: %v", err)
	}
	return p
}

// TestRealPolicy drives the resolver with policies from policy.Parse,
// including a live replace (the Policy func is read per query).
func TestRealPolicy(t *testing.T) {
	up := startUpstream(t, zone(
		"allowed.test. 300 IN A 192.0.2.10",
		"allowed.test. 300 IN AAAA 2001:db8::10",
		"www.cdn-ok.test. 300 IN CNAME edge.fastly.test.",
		"edge.fastly.test. 300 IN A 192.0.2.40",
		"api.cdn-ok.test. 300 IN CNAME x.evil.test.",
		"x.evil.test. 300 IN A 192.0.2.66",
		"npm.mirror.internal. 300 IN A 10.0.0.5",
		"other.test. 300 IN A 192.0.2.77",
	))
	r, err := New(Config{Upstreams: []string{up.addr}}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	var cur atomic.Pointer[policy.Policy]
	cur.Store(mustParse(t, realPolicy))
	allow, evs := &allowRec{}, &events{testutil.NewAuditRecorder()}
	sb := &Sandbox{Name: "real", ID: 7, Policy: cur.Load, Allow: allow, Audit: evs}
	h, err := r.Handler(sb)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{r: r, sb: sb, h: h, allow: allow, ev: evs}

	tests := []struct {
		name      string
		qname     string
		qtype     uint16
		wantRcode int
		wantAddrs string
		wantDec   string
	}{
		{"allowed", "allowed.test", dns.TypeA, dns.RcodeSuccess, "[192.0.2.10]", audit.DecisionAllow},
		{"ipv6 false", "allowed.test", dns.TypeAAAA, dns.RcodeSuccess, "[]", audit.DecisionAllow},
		{"unmatched", "other.test", dns.TypeA, dns.RcodeNameError, "[]", audit.DecisionDeny},
		{"denied", "x.evil.test", dns.TypeA, dns.RcodeNameError, "[]", audit.DecisionDeny},
		{"wildcard through cdn alias", "www.cdn-ok.test", dns.TypeA, dns.RcodeSuccess, "[192.0.2.40]", audit.DecisionAllow},
		{"chain through denied name", "api.cdn-ok.test", dns.TypeA, dns.RcodeNameError, "[]", audit.DecisionDeny},
		{"remap", "registry.npmjs.org", dns.TypeA, dns.RcodeSuccess, "[10.0.0.5]", audit.DecisionAllow},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := e.query(t, tt.qname, tt.qtype)
			if m.Rcode != tt.wantRcode || fmt.Sprint(addrsOf(m)) != tt.wantAddrs {
				t.Fatalf("rcode %s addresses %v, want %s %s", dns.RcodeToString[m.Rcode], addrsOf(m), dns.RcodeToString[tt.wantRcode], tt.wantAddrs)
			}
			if ev := evs.last(t); ev.Decision != tt.wantDec {
				t.Errorf("decision %q, want %q", ev.Decision, tt.wantDec)
			}
		})
	}
	if up.saw("other.test") || up.saw("x.evil.test") || up.saw("registry.npmjs.org") {
		t.Errorf("upstream saw refused or remapped names: %v", up.queries())
	}
	if bs := sb.Bindings.Lookup(netip.MustParseAddr("10.0.0.5")); len(bs) != 1 || bs[0].Target != "npm.mirror.internal" {
		t.Errorf("remap binding %+v", bs)
	}

	// Live replace: audit mode resolves other.test and says would_deny.
	cur.Store(mustParse(t, "version: 1\nmode: audit\nrules:\n  - name: api\n    hosts: [allowed.test]\n"))
	m := e.query(t, "other.test", dns.TypeA)
	if fmt.Sprint(addrsOf(m)) != "[192.0.2.77]" {
		t.Fatalf("audit mode answer %v", m)
	}
	if ev := evs.last(t); ev.Decision != audit.DecisionWouldDeny {
		t.Errorf("audit mode decision %q", ev.Decision)
	}
	if !allow.allowedAt(netip.MustParseAddr("192.0.2.77"), time.Now()) {
		t.Error("audit mode answer not allowlisted")
	}
}
