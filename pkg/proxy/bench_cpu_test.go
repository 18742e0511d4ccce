package proxy

import (
	"net/http"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the process's user+system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkInterceptCPU is sequential HTTPS keep-alive requests, directly
// and through sluice (with header injection), reporting the process CPU
// time per request (client, upstream and, for sluice, the proxy: a shared
// machine distorts wall time, not CPU time). The difference between the
// two cpu-µs/op (and allocs/op) is what sluice adds per request.
func BenchmarkInterceptCPU(b *testing.B) {
	p := newBenchPair(b, true)
	for _, c := range []struct {
		name string
		cl   *http.Client
	}{{"direct", p.direct}, {"sluice", p.sluice}} {
		b.Run(c.name, func(b *testing.B) {
			get(b, c.cl, p.url)
			b.ReportAllocs()
			c0, t0 := cpuTime(b), time.Now()
			for b.Loop() {
				get(b, c.cl, p.url)
			}
			cpu, wall := cpuTime(b)-c0, time.Since(t0)
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
			b.ReportMetric(float64(b.N)/wall.Seconds(), "req/s")
		})
	}
}

// BenchmarkHostOnly is the per-request Host normalisation.
func BenchmarkHostOnly(b *testing.B) {
	for _, h := range []string{"api.example.com", "api.example.com:443", "10.0.0.1:8080", "[::1]:443"} {
		b.Run(h, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := hostOnly(h); !ok {
					b.Fatal("invalid")
				}
			}
		})
	}
}
