package policy

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestListenEntries(t *testing.T) {
	t.Parallel()
	p, err := Load("../../testdata/policies/dev-server-listen.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := []ListenEntry{
		{netip.MustParsePrefix("10.20.0.0/16"), []uint16{8080, 8443}},
		{netip.MustParsePrefix("fd20::/48"), []uint16{8080, 8443}},
		{netip.MustParsePrefix("192.0.2.10/32"), []uint16{8080, 8443}},
	}
	if got := p.ListenEntries(); !reflect.DeepEqual(got, want) {
		t.Fatalf("ListenEntries = %v, want %v", got, want)
	}
	// A listen rule allows nothing outbound.
	if len(p.StaticCIDRs()) != 0 {
		t.Fatalf("a listen rule produced outbound CIDRs: %v", p.StaticCIDRs())
	}
}

func TestListenErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, src, wantErr string
	}{
		{"port zero", "listen: {ports: [0], from: [10.0.0.0/8]}", `rules[0].listen.ports[0]: "0" is not a port`},
		{"too many ports", "listen: {ports: [1,2,3,4,5,6,7,8,9], from: [10.0.0.0/8]}", "at most 8 ports per listen rule"},
		{"bad cidr", "listen: {ports: [80], from: [10.0.0/8]}", `rules[0].listen.from[0]: "10.0.0/8" is not a CIDR`},
		{"every address", "listen: {ports: [80], from: [0.0.0.0/0]}", "allows every address"},
		{"unknown field", "listen: {ports: [80], from: [10.0.0.0/8], to: [1.2.3.4]}", "rules[0].listen.to: unknown field; expect one of ports, from"},
		{"no ports", "listen: {from: [10.0.0.0/8]}", "rules[0].listen.ports: required"},
		{"with direct", "direct: true\n    listen: {ports: [80], from: [10.0.0.0/8]}", "rules[0].direct: a listen rule has only name and listen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte("version: 1\nrules:\n  - name: l\n    "+tt.src+"\n"))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}
