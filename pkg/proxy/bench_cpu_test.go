package proxy

import (
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
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

// BenchmarkInterceptCPU is sequential HTTPS requests (keep-alive, and a new
// TLS connection per request), directly and through sluice (with header
// injection), reporting the process CPU
// time per request (client, upstream and, for sluice, the proxy: a shared
// machine distorts wall time, not CPU time). The difference between the
// two cpu-µs/op (and allocs/op) is what sluice adds per request.
func BenchmarkInterceptCPU(b *testing.B) {
	for _, mode := range []struct {
		name      string
		keepAlive bool
	}{{"keepalive", true}, {"newconn", false}} {
		p := newBenchPair(b, mode.keepAlive, false)
		for _, c := range []struct {
			name string
			cl   *http.Client
		}{{"direct", p.direct}, {"sluice", p.sluice}} {
			b.Run(mode.name+"/"+c.name, func(b *testing.B) {
				measureGets(b, c.cl, p.url)
			})
		}
	}
}

// measureGets times sequential GETs of url with cl after one warm-up,
// reporting allocations, process CPU per request and requests per second.
func measureGets(b *testing.B, cl *http.Client, url string) {
	get(b, cl, url)
	b.ReportAllocs()
	c0, t0 := cpuTime(b), time.Now()
	for b.Loop() {
		get(b, cl, url)
	}
	cpu, wall := cpuTime(b)-c0, time.Since(t0)
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
	b.ReportMetric(float64(b.N)/wall.Seconds(), "req/s")
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

// BenchmarkInterceptCIDRNewConn is a new client connection per request to
// an address admitted by a CIDR rule with a header: each such connection has
// its own upstream pool, so each needs an upstream TLS handshake.
func BenchmarkInterceptCIDRNewConn(b *testing.B) {
	var resumed atomic.Int64
	up := newUpstream(b, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS.DidResume {
			resumed.Add(1)
		}
		io.WriteString(w, "ok")
	}))
	dst := addrPort(b, up.URL)
	e := newEnv(b, fmt.Sprintf(`
version: 1
rules:
  - name: net
    cidrs: [127.0.0.1/32]
    ports: [%d]
    headers:
      - {name: Authorization, type: secret, value: "Bearer {TOKEN}"}
`, dst.Port()))
	tr := e.transport(false)
	tr.DisableKeepAlives = true
	tr.TLSClientConfig.ServerName = "api.test"
	b.Cleanup(tr.CloseIdleConnections)
	cl := &http.Client{Transport: tr}
	url := "https://" + dst.String() + "/v1/x"
	get(b, cl, url)
	b.ReportAllocs()
	resumed.Store(0)
	c0, t0 := cpuTime(b), time.Now()
	for b.Loop() {
		get(b, cl, url)
	}
	cpu, wall := cpuTime(b)-c0, time.Since(t0)
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
	b.ReportMetric(float64(b.N)/wall.Seconds(), "req/s")
	b.ReportMetric(float64(resumed.Load())/float64(b.N), "upstream-resumed/op")
}
