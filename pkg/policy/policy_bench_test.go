package policy

import (
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// bigPolicy returns a policy of n rules: exact hosts, wildcards, path
// rules with headers and CIDRs, as a large organisation might write.
func bigPolicy(tb testing.TB, n int) *Policy {
	tb.Helper()
	var b strings.Builder
	b.WriteString("version: 1\nrules:\n")
	for i := 0; i < n; i++ {
		switch i % 4 {
		case 0:
			fmt.Fprintf(&b, "  - {name: r%d, hosts: [api%d.svc%d.example.com]}\n", i, i, i%97)
		case 1:
			fmt.Fprintf(&b, "  - {name: r%d, hosts: [\"*.t%d.example.net\"], ports: [443]}\n", i, i)
		case 2:
			fmt.Fprintf(&b, "  - name: r%d\n    hosts: [\"**.h%d.example.org\"]\n    paths: [\"/v1/*/items\", \"/v2/**\"]\n    methods: [GET, POST]\n    headers: [{name: Authorization, type: secret, value: \"Bearer {T%d}\"}]\n", i, i, i)
		case 3:
			fmt.Fprintf(&b, "  - {name: r%d, cidrs: [\"10.%d.%d.0/24\"], ports: [5432]}\n", i, i/256%256, i%256)
		}
	}
	p, err := Parse("big.yaml", []byte(b.String()))
	if err != nil {
		tb.Fatal(err)
	}
	if len(p.Rules) != n {
		tb.Fatalf("%d rules", len(p.Rules))
	}
	return p
}

func TestBigPolicyAnswers(t *testing.T) {
	p := bigPolicy(t, 10000)
	if m := p.MatchName("api4000.svc23.example.com"); !m.Allowed || m.Rule.Name != "r4000" {
		t.Fatalf("%+v", m)
	}
	if m := p.MatchConn("a.b.t9001.example.net", 443); m.Verdict != VerdictSplice || m.Rule.Name != "r9001" {
		t.Fatalf("%+v", m)
	}
	if m := p.MatchRequest("x.h9998.example.org", 443, "GET", "/v1/abc/items"); !m.Allowed || m.Rule.Name != "r9998" {
		t.Fatalf("%+v", m)
	}
	if m := p.MatchAddr(netip.MustParseAddr("10.27.15.9"), 5432); m.Verdict != VerdictSplice || m.Rule.Name != "r6927" {
		t.Fatalf("%+v", m)
	}
	allocs := testing.AllocsPerRun(100, func() {
		p.MatchName("API4000.svc23.example.com.")
		p.MatchConn("a.b.t9001.example.net", 443)
		p.MatchRequest("x.h9998.example.org", 443, "GET", "/v1/abc/items?q=1")
		p.MatchAddr(netip.MustParseAddr("10.27.15.9"), 5432)
		p.MatchConn("nothing.example.com", 443)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per lookup round", allocs)
	}
}

// Lookups on a 10,000-rule policy: each must take well under 1µs and
// allocate nothing.
func BenchmarkMatch(b *testing.B) {
	p := bigPolicy(b, 10000)
	addr := netip.MustParseAddr("10.27.15.9")
	cases := []struct {
		name string
		fn   func()
	}{
		{"MatchName/exact", func() { p.MatchName("api4000.svc23.example.com") }},
		{"MatchName/mixed-case", func() { p.MatchName("API4000.Svc23.Example.COM.") }},
		{"MatchName/miss", func() { p.MatchName("nothing.example.com") }},
		{"MatchConn/wildcard", func() { p.MatchConn("a.b.t9001.example.net", 443) }},
		{"MatchConn/long-name", func() { p.MatchConn("a.b.c.d.e.f.g.h.i.j.k.l.m.t9001.example.net", 443) }},
		{"MatchRequest/path", func() { p.MatchRequest("x.h9998.example.org", 443, "GET", "/v1/abc/items?q=1") }},
		{"MatchAddr", func() { p.MatchAddr(addr, 5432) }},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			// On a loaded machine wall time per op includes time spent
			// waiting for a CPU; cpu-ns/op is the thread's own CPU time.
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			start := threadCPU()
			for b.Loop() {
				c.fn()
			}
			b.ReportMetric(float64(threadCPU()-start)/float64(b.N), "cpu-ns/op")
		})
	}
}

// threadCPU is the CPU time of the calling OS thread, in nanoseconds.
func threadCPU() int64 {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

func BenchmarkParse10k(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		bigPolicy(b, 10000)
	}
}
