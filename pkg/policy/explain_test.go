package policy

import (
	"net/netip"
	"strings"
	"testing"
)

func TestExplain(t *testing.T) {
	p := mustParse(t, `version: 1
mode: audit
rules:
  - name: api
    hosts: [api.example.com]
    remap: mirror.example.com:8443
    headers: [{name: Authorization, type: secret, value: "Bearer {TOKEN}"}]
    callback: {url: "http://127.0.0.1:9000/credentials"}
  - {name: db, cidrs: [10.0.0.0/8], ports: [5432], direct: true}
  - {name: ssh, hosts: [git.example.com], ports: [22]}
`)
	tests := []struct {
		name, method, url string
		allowed           bool
		rule, conn        string
		wantErr           string
		check             func(t *testing.T, e *Explanation)
	}{
		{name: "intercepted with everything", method: "GET", url: "api.example.com/v1/x?k=v", allowed: true, rule: "api", conn: "intercept",
			check: func(t *testing.T, e *Explanation) {
				if e.Method != "GET" || e.Port != 443 || e.Path != "/v1/x" || e.Mode != "audit" || e.Remap != "mirror.example.com:8443" ||
					e.DNS == nil || e.DNS.Remap != "mirror.example.com" || len(e.Headers) != 1 || e.Headers[0].Value != "Bearer <secret:TOKEN>" ||
					e.Callback == nil || e.Callback.TTL != "5m0s" || e.Callback.Timeout != "2s" {
					t.Fatalf("%+v", e)
				}
			}},
		{name: "address", method: "GET", url: "http://10.1.2.3:5432/", allowed: true, rule: "db", conn: "splice",
			check: func(t *testing.T, e *Explanation) {
				if e.DNS != nil || !e.Direct || len(e.Headers) != 0 {
					t.Fatalf("%+v", e)
				}
			}},
		{name: "port refused", method: "GET", url: "https://git.example.com/", allowed: false, conn: "deny",
			check: func(t *testing.T, e *Explanation) {
				if e.Reason != "no rule allows connections to git.example.com port 443" || e.RuleIndex != -1 || !e.DNS.Allowed {
					t.Fatalf("%+v", e)
				}
			}},
		{name: "name refused", method: "GET", url: "https://other.example.com/", allowed: false, conn: "deny"},
		{name: "lower-case method", method: "get", url: "api.example.com/v1/x", allowed: false, conn: "intercept",
			check: func(t *testing.T, e *Explanation) {
				if e.Status != 400 || !strings.Contains(e.Reason, "upper case") || len(e.Headers) != 0 {
					t.Fatalf("%+v", e)
				}
			}},
		{name: "bad scheme", method: "GET", url: "ftp://x/", wantErr: `scheme "ftp"`},
		{name: "no host", method: "GET", url: "https:///x", wantErr: "no host"},
		{name: "bad port", method: "GET", url: "https://x:99999/", wantErr: "port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := p.Explain(tt.method, tt.url)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if e.Allowed != tt.allowed || e.Rule != tt.rule || e.Connection != tt.conn {
				t.Fatalf("allowed %v rule %q conn %q, want %v %q %q (%+v)", e.Allowed, e.Rule, e.Connection, tt.allowed, tt.rule, tt.conn, e)
			}
			if tt.check != nil {
				tt.check(t, e)
			}
		})
	}
}

func TestDiff(t *testing.T) {
	old := mustParse(t, `version: 1
rules:
  - {name: a, hosts: [a.example], methods: [GET, POST]}
  - {name: net, cidrs: [10.0.0.0/8]}
`)
	new := mustParse(t, `version: 1
rules:
  - {name: a, hosts: [a.example], methods: [GET]}
  - {name: b, hosts: [b.example]}
`)
	obs := []Observation{
		{Kind: "http", Host: "a.example", Port: 443, Method: "POST", Path: "/x"}, // newly denied
		{Kind: "http", Host: "a.example", Port: 443, Method: "GET", Path: "/x"},  // unchanged
		{Kind: "dns", Host: "b.example"},                                         // newly allowed
		{Kind: "http", Host: "a.example", Port: 443, Method: "POST", Path: "/x"}, // merged
		{Kind: "conn", Addr: netip.MustParseAddr("10.1.1.1"), Port: 22},          // newly denied
		{Kind: "conn", Host: "b.example", Port: 443},                             // newly allowed
		{Kind: "weird"}, // denied by both
	}
	changes := Diff(old, new, obs)
	var got []string
	for _, c := range changes {
		got = append(got, c.Obs.Kind+" "+c.Obs.Host+c.Obs.Addr.String()+" "+c.Old.Verdict+"->"+c.New.Verdict+" x"+string(rune('0'+c.Count)))
	}
	want := "http a.exampleinvalid IP allow->deny x2|dns b.exampleinvalid IP deny->allow x1|conn 10.1.1.1 splice->deny x1|conn b.exampleinvalid IP deny->splice x1"
	if strings.Join(got, "|") != want {
		t.Fatalf("got  %s\nwant %s", strings.Join(got, "|"), want)
	}
	if !changes[0].NewlyDenied() || changes[1].NewlyDenied() {
		t.Fatal("NewlyDenied")
	}
	if len(Diff(old, old, obs)) != 0 {
		t.Fatal("a policy differs from itself")
	}
}
