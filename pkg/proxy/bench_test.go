package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/audit"
)

func BenchmarkPeekClientHello(b *testing.B) {
	for _, tt := range []struct {
		name string
		data []byte
	}{
		{"one record", clientHello(b, "api.example.com", "h2", "http/1.1")},
		{"fragmented 64B", fragment(clientHello(b, "api.example.com", "h2", "http/1.1"), 64)},
	} {
		b.Run(tt.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(tt.data)))
			for b.Loop() {
				sni, _, err := parseClientHello(tt.data)
				if err != nil || len(sni) == 0 {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkParseHTTPHead(b *testing.B) {
	data := []byte("GET /v1/models HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseHTTPHead(data); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHeaderInjection measures the per-request credential work:
// rendering two secret headers, building the redactor and rewriting the
// outbound request.
func BenchmarkHeaderInjection(b *testing.B) {
	pol := mustPolicy(b, `
version: 1
rules:
  - name: api
    hosts: [api.test]
    headers:
      - {name: Authorization, type: secret, value: "Bearer {TOKEN}"}
      - {name: X-Other, type: secret, value: "{OTHER}"}
`)
	rule := pol.Rules[0]
	s := &server{sb: &Sandbox{Name: "b", Secrets: fakeSecrets{"TOKEN": "s3cr3t-token-value", "OTHER": "another-secret-xyz"}}}
	in := httptest.NewRequest("GET", "https://api.test/v1/x", nil)
	in.Header.Set("Authorization", "Bearer fake")
	in.Header.Set("User-Agent", "bench")
	b.ReportAllocs()
	for b.Loop() {
		rs := &reqState{scheme: "https", upHostPort: "api.test:443", outHost: "api.test"}
		if msg := s.credentials(context.Background(), rs, rule, "api.test", 443); msg != "" {
			b.Fatal(msg)
		}
		out := in.Clone(context.WithValue(in.Context(), reqKey{}, rs))
		rs.prepareUpstream(out)
		if out.Header.Get("Authorization") != "Bearer s3cr3t-token-value" {
			b.Fatal("not injected")
		}
	}
}

// benchPair serves the same TLS upstream directly and through sluice.
type benchPair struct {
	e      *env
	dst    netip.AddrPort
	direct *http.Client
	sluice *http.Client
	url    string
}

func newBenchPair(b *testing.B, keepAlive, h2 bool, opts ...envOpt) *benchPair {
	up := newUpstream(b, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	dst := addrPort(b, up.URL)
	e := newEnv(b, apiPolicy(dst.Port()), opts...)
	e.bind("api.test", dst)
	direct := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", dst.String())
		},
		TLSClientConfig:   &tls.Config{RootCAs: upstreamPool()},
		DisableKeepAlives: !keepAlive,
		ForceAttemptHTTP2: h2,
	}
	tr := e.transport(h2)
	tr.DisableKeepAlives = !keepAlive
	b.Cleanup(direct.CloseIdleConnections)
	b.Cleanup(tr.CloseIdleConnections)
	return &benchPair{
		e: e, dst: dst,
		direct: &http.Client{Transport: direct},
		sluice: &http.Client{Transport: tr},
		url:    fmt.Sprintf("https://api.test:%d/v1/x", dst.Port()),
	}
}

func get(b *testing.B, c *http.Client, url string) {
	resp, err := c.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		b.Fatalf("status %d", resp.StatusCode)
	}
}

// measure runs n sequential requests and returns their latencies.
func measure(b *testing.B, c *http.Client, url string, n int) []time.Duration {
	lat := make([]time.Duration, n)
	for i := range lat {
		t0 := time.Now()
		get(b, c, url)
		lat[i] = time.Since(t0)
	}
	slices.Sort(lat)
	return lat
}

func pct(l []time.Duration, p float64) time.Duration { return l[int(float64(len(l)-1)*p)] }

func sum(l []time.Duration) (s time.Duration) {
	for _, d := range l {
		s += d
	}
	return s
}

// BenchmarkIntercept reports, for HTTPS with keep-alive, with a new TLS
// connection per request and over HTTP/2 (HTTP/2 upstream), the intercepted requests/s, the direct
// requests/s, their ratio, and the p50/p99 latency sluice adds.
func BenchmarkIntercept(b *testing.B) {
	for _, mode := range []struct {
		name      string
		keepAlive bool
		h2        bool
	}{{"keepalive", true, false}, {"newconn", false, false}, {"h2", true, true}} {
		b.Run(mode.name, func(b *testing.B) {
			p := newBenchPair(b, mode.keepAlive, mode.h2)
			get(b, p.direct, p.url) // warm up pools and leaf cache
			get(b, p.sluice, p.url)
			var direct, sluice []time.Duration
			for b.Loop() {
				direct = append(direct, measure(b, p.direct, p.url, 1)...)
				sluice = append(sluice, measure(b, p.sluice, p.url, 1)...)
			}
			slices.Sort(direct)
			slices.Sort(sluice)
			dr := float64(len(direct)) / sum(direct).Seconds()
			sr := float64(len(sluice)) / sum(sluice).Seconds()
			b.ReportMetric(dr, "direct-req/s")
			b.ReportMetric(sr, "sluice-req/s")
			b.ReportMetric(sr/dr, "ratio")
			b.ReportMetric(float64((pct(sluice, 0.5) - pct(direct, 0.5)).Microseconds()), "p50-added-µs")
			b.ReportMetric(float64((pct(sluice, 0.99) - pct(direct, 0.99)).Microseconds()), "p99-added-µs")
		})
	}
}

// BenchmarkInterceptParallel is intercepted keep-alive throughput with
// concurrent clients (what a busy sandbox does).
func BenchmarkInterceptParallel(b *testing.B) {
	p := newBenchPair(b, true, false)
	for _, c := range []struct {
		name string
		cl   *http.Client
	}{{"direct", p.direct}, {"sluice", p.sluice}} {
		b.Run(c.name, func(b *testing.B) {
			get(b, c.cl, p.url)
			b.SetParallelism(4)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					get(b, c.cl, p.url)
				}
			})
		})
	}
}

// BenchmarkSplice is raw TCP throughput to a sink through the splice path
// and directly (compare the MB/s of the two sub-benchmarks).
func BenchmarkSplice(b *testing.B) {
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	go func() {
		for {
			c, err := sink.Accept()
			if err != nil {
				return
			}
			go func() {
				buf := make([]byte, 1<<20)
				for {
					if _, err := c.Read(buf); err != nil {
						break
					}
				}
				c.Close()
			}()
		}
	}()
	dst := netip.MustParseAddrPort(sink.Addr().String())
	e := newEnv(b, fmt.Sprintf(`
version: 1
rules:
  - name: sink
    cidrs: [127.0.0.1/32]
    ports: [%d]
`, dst.Port()))
	const chunk = 1 << 20
	buf := make([]byte, chunk)
	// Interleaved (robust against a machine whose load varies): 1 MiB
	// direct, 1 MiB through sluice, and so on; the ratio metric compares
	// the two throughputs.
	b.Run("ratio", func(b *testing.B) {
		dc, err := net.Dial("tcp", dst.String())
		if err != nil {
			b.Fatal(err)
		}
		defer dc.Close()
		sc, err := e.dial(context.Background(), dst)
		if err != nil {
			b.Fatal(err)
		}
		defer sc.Close()
		var td, ts time.Duration
		for b.Loop() {
			t0 := time.Now()
			for i := 0; i < 8; i++ {
				if _, err := dc.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			t1 := time.Now()
			for i := 0; i < 8; i++ {
				if _, err := sc.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			td += t1.Sub(t0)
			ts += time.Since(t1)
		}
		mb := float64(8*chunk*b.N) / (1 << 20)
		b.ReportMetric(mb/td.Seconds(), "direct-MiB/s")
		b.ReportMetric(mb/ts.Seconds(), "sluice-MiB/s")
		b.ReportMetric(td.Seconds()/ts.Seconds(), "ratio")
	})
	for _, tt := range []struct {
		name string
		dial func() (net.Conn, error)
	}{
		{"direct", func() (net.Conn, error) { return net.Dial("tcp", dst.String()) }},
		{"sluice", func() (net.Conn, error) { return e.dial(context.Background(), dst) }},
	} {
		b.Run(tt.name, func(b *testing.B) {
			c, err := tt.dial()
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			b.SetBytes(chunk)
			for b.Loop() {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkInterceptH2Parallel is intercepted HTTP/2 throughput with many
// concurrent streams on one client connection (as `hey -h2`), against the
// same client talking HTTP/2 to the upstream directly; cpu-µs/op is the
// process's CPU (client, upstream and proxy) per request.
func BenchmarkInterceptH2Parallel(b *testing.B) {
	// Events are discarded: the test recorder keeps every one, and its
	// growing slice would dominate the profile.
	p := newBenchPair(b, true, true, func(e *env, _ *Config) { e.sb.Audit = audit.Discard{} })
	for _, c := range []struct {
		name string
		cl   *http.Client
	}{{"direct", p.direct}, {"sluice", p.sluice}} {
		b.Run(c.name, func(b *testing.B) {
			get(b, c.cl, p.url)
			b.SetParallelism(25)
			c0 := cpuTime(b)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					get(b, c.cl, p.url)
				}
			})
			// CPU of client, upstream (and proxy) per request: unlike
			// ns/op, little affected by other work on the machine.
			b.ReportMetric(float64((cpuTime(b)-c0).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}
