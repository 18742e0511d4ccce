package policy

import (
	"strings"
	"testing"
)

func TestPrecedenceTrapWarning(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, rules string
		want        string // "" means no warning
	}{
		{"same host", `
  - {name: api, hosts: [api.example.com], paths: ["/repos/**"]}
  - {name: no-delete, hosts: [api.example.com], methods: [DELETE], action: deny}`,
			`p.yaml:4:31: warning: rules[1].methods: the deny of DELETE does not apply to api.example.com paths ["/repos/**"]: rules[0] (api) allows them`},
		{"wildcard deny below an exact allow", `
  - {name: api, hosts: [api.example.com], paths: ["/v1/*"], methods: [GET, DELETE]}
  - {name: no-writes, hosts: ["*.example.com"], methods: [DELETE, PUT], action: deny}`,
			`the deny of DELETE does not apply to api.example.com paths ["/v1/*"]`},
		{"deny with paths is fine", `
  - {name: api, hosts: [api.example.com], paths: ["/repos/**"]}
  - {name: no-delete, hosts: [api.example.com], paths: ["/repos/**"], methods: [DELETE], action: deny}`, ""},
		{"allow methods exclude the denied ones", `
  - {name: api, hosts: [api.example.com], paths: ["/repos/**"], methods: [GET]}
  - {name: no-delete, hosts: [api.example.com], methods: [DELETE], action: deny}`, ""},
		{"more specific deny host wins anyway", `
  - {name: api, hosts: ["*.example.com"], paths: ["/repos/**"]}
  - {name: no-delete, hosts: [api.example.com], methods: [DELETE], action: deny}`, ""},
		{"other host", `
  - {name: api, hosts: [api.example.com], paths: ["/repos/**"]}
  - {name: no-delete, hosts: [api.example.org], methods: [DELETE], action: deny}`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("p.yaml", []byte("version: 1\nrules:"+tt.rules+"\n"))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, w := range p.Warnings {
				got = append(got, w.String())
			}
			all := strings.Join(got, "\n")
			if tt.want == "" {
				if len(got) != 0 {
					t.Fatalf("unexpected warnings:\n%s", all)
				}
				return
			}
			if !strings.Contains(all, tt.want) {
				t.Fatalf("warnings:\n%s\nwant one containing %q", all, tt.want)
			}
		})
	}
}
