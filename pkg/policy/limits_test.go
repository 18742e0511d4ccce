package policy

import (
	"encoding/json"
	"slices"
	"sort"
	"strings"
	"testing"
)

func TestLimits(t *testing.T) {
	t.Parallel()
	p, err := Load("../../testdata/policies/dev-server-listen.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := Limits{Connections: 256, UpstreamConnections: 256, RequestHeadBytes: 8 << 20, DNSQPS: 100}
	if got := p.Fences(); got != want {
		t.Fatalf("Fences() = %v, want %v", got, want)
	}
	p, err = Parse("p.yaml", []byte("version: 1\nrules: []\nlimits: {dns_qps: 7}\n"))
	if err != nil {
		t.Fatal(err)
	}
	want = DefaultLimits
	want.DNSQPS = 7
	if got := p.Fences(); got != want {
		t.Fatalf("partial limits: Fences() = %v, want %v", got, want)
	}
	if got := (*Policy)(nil).Fences(); got != DefaultLimits {
		t.Fatalf("nil policy: %v", got)
	}
}

func TestLimitsErrors(t *testing.T) {
	t.Parallel()
	tests := []struct{ src, want string }{
		{"limits: {connections: 0}", `3:23: limits.connections: "0" is not an integer from 1 to 1048576`},
		{"limits: {request_head_bytes: 10}", `limits.request_head_bytes: "10" is not an integer from 65536`},
		{"limits: {dns_qps: fast}", `limits.dns_qps: "fast" is not an integer`},
		{"limits: {sockets: 3}", "limits.sockets: unknown field; expect one of connections, upstream_connections, request_head_bytes, dns_qps"},
		{"limits: [1]", "limits: expect a mapping, got a list"},
	}
	for _, tt := range tests {
		_, err := Parse("p.yaml", []byte("version: 1\nrules: []\n"+tt.src+"\n"))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want it to contain %q", tt.src, err, tt.want)
		}
	}
}

// TestLimitsSchema keeps schema.json's limits in step with limitFields.
func TestLimitsSchema(t *testing.T) {
	t.Parallel()
	var s struct {
		Properties struct {
			Limits struct {
				Properties map[string]struct {
					Minimum, Maximum int64
				} `json:"properties"`
			} `json:"limits"`
		} `json:"properties"`
	}
	if err := json.Unmarshal(Schema, &s); err != nil {
		t.Fatal(err)
	}
	var got, want []string
	for k := range s.Properties.Limits.Properties {
		got = append(got, k)
	}
	for _, f := range limitFields {
		want = append(want, f.name)
		p := s.Properties.Limits.Properties[f.name]
		if p.Minimum != f.min || p.Maximum != f.max {
			t.Errorf("%s: schema bounds %d..%d, parser %d..%d", f.name, p.Minimum, p.Maximum, f.min, f.max)
		}
	}
	sort.Strings(got)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Fatalf("schema limits %v, parser %v", got, want)
	}
}
