package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestEvaluate(t *testing.T) {
	in := `a.ka 100
c.ka 60
c.ka.inj 1
a.ka 200
c.ka 100
a.ka 1000
c.ka 400
c.ka.inj 0.98
c.ka.err 3
h.outside 100
h.inside 105
a.lat.p99 500
c.lat.p99 1700
e.ka na squid-openssl not available
g.sluice na hey failed: x
noise.busy 40
a.ka.cpu_total 70
c.ka.cpu_total 140
a.ka.cpu_total 80
c.ka.cpu_total 100
a.ka.cpu_total 60
c.ka.cpu_total 120
`
	path := filepath.Join(t.TempDir(), "m")
	if err := os.WriteFile(path, []byte(in), 0o644); err != nil {
		t.Fatal(err)
	}
	data, err := read(path)
	if err != nil {
		t.Fatal(err)
	}
	find := func(key, label string) Result {
		for _, r := range rows {
			if r.Key == key && (label == "" || strings.Contains(r.Label, label)) {
				return evaluate(r, data)
			}
		}
		t.Fatalf("no row %s", key)
		return Result{}
	}
	tests := []struct {
		name      string
		res       Result
		median    float64 // -1: none
		ratio     float64 // -1: none
		met       string  // "", "yes", "no"
		wantNotes string  // substring of notes()
	}{
		// per-round ratios 0.6, 0.5, 0.4 -> 0.5, although medians give 100/200
		{"paired ratio under the 0.6x target", find("c.ka", "keep-alive"), 100, 0.5, "no", "header on 99%"},
		{"failed requests are noted", find("c.ka", "keep-alive"), 100, 0.5, "no", "3 failed requests"},
		{"lower is better", find("h.inside", ""), 105, 1.05, "yes", ""},
		{"added latency over the target", find("c.lat.p99", ""), 1700, -1, "no", ""},
		{"missing peer", find("e.ka", "keep-alive"), -1, -1, "", "squid-openssl not available"},
		{"baseline missing", find("c.ka", "squid"), 100, -1, "", ""},
		{"not measured", find("d.nc", ""), -1, -1, "", "not measured"},
		// per-round 0.5, 0.8, 0.5 -> 0.5: direct's CPU per request over the row's
		{"ceiling", find("a.ka.cpu_total", "over intercept's (client + upstream + sluice), keep-alive"), 70, 0.5, "", "cores allow"},
		{"ceiling without its row", find("a.ka.cpu_total", "squid"), 70, -1, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.res
			switch {
			case tt.median < 0 && r.Median != nil:
				t.Errorf("median = %v, want none", *r.Median)
			case tt.median >= 0 && (r.Median == nil || *r.Median != tt.median):
				t.Errorf("median = %v, want %v", r.Median, tt.median)
			}
			switch {
			case tt.ratio < 0 && r.Ratio != nil:
				t.Errorf("ratio = %v, want none", *r.Ratio)
			case tt.ratio >= 0 && (r.Ratio == nil || abs(*r.Ratio-tt.ratio) > 1e-9):
				t.Errorf("ratio = %v, want %v", r.Ratio, tt.ratio)
			}
			got := ""
			if r.Met != nil {
				got = map[bool]string{true: "yes", false: "no"}[*r.Met]
			}
			if got != tt.met {
				t.Errorf("met = %q, want %q", got, tt.met)
			}
			if !strings.Contains(notes(r), tt.wantNotes) {
				t.Errorf("notes = %q, want substring %q", notes(r), tt.wantNotes)
			}
		})
	}
	added := find("c.lat.p99", "")
	if added.Added == nil || *added.Added != 1200 {
		t.Errorf("added = %v, want 1200", added.Added)
	}
}

func TestNoiseWarning(t *testing.T) {
	quiet, busy := 3.0, 60.0
	for _, tt := range []struct {
		name string
		v    *float64
		want string
	}{
		{"idle", &quiet, ""},
		{"busy", &busy, "60% busy"},
		{"unknown", nil, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := noiseWarning(Report{Rows: []Result{{Series: "noise.busy", Median: tt.v}}})
			if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
				t.Errorf("noiseWarning = %q, want %q", got, tt.want)
			}
		})
	}
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}
