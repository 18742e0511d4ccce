package dnsproxy

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-dev/sluice/pkg/audit"
)

// BenchmarkCacheHit measures the cache lookup of a warm entry.
func BenchmarkCacheHit(b *testing.B) {
	c := newCache(1000)
	now := time.Now()
	m := new(dns.Msg)
	m.SetQuestion("allowed.test.", dns.TypeA)
	rr, _ := dns.NewRR("allowed.test. 300 IN A 192.0.2.10")
	m.Answer = append(m.Answer, rr)
	k := cacheKey{name: "allowed.test", qtype: dns.TypeA}
	c.put(k, newEntry(m, now))
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := c.get(k, now); !ok {
			b.Fatal("miss")
		}
	}
}

// packWriter packs the answer like a real server and drops it.
type packWriter struct {
	recorder
	buf []byte
}

func (w *packWriter) WriteMsg(m *dns.Msg) error {
	b, err := m.PackBuffer(w.buf)
	w.buf = b
	return err
}

func (w *packWriter) Write(b []byte) (int, error) { return len(b), nil }

// BenchmarkServeDNSCached measures one cached answer through the handler,
// policy check, allowlist bookkeeping and packing included (no sockets).
func BenchmarkServeDNSCached(b *testing.B) {
	up := startUpstream(b, zone("allowed.test. 300 IN A 192.0.2.10", "allowed.test. 300 IN A 192.0.2.11"))
	e := newEnv(b, Config{Upstreams: []string{up.addr}}, newTestPolicy("allowed.test"))
	e.sb.Audit = nopEmitter{}
	req := new(dns.Msg)
	req.SetQuestion("allowed.test.", dns.TypeA)
	req.SetEdns0(1232, false)
	w := &packWriter{buf: make([]byte, 0, 512)}
	e.h.ServeDNS(w, req)
	b.ReportAllocs()
	for b.Loop() {
		e.h.ServeDNS(w, req)
	}
	if n := len(up.queries()); n != 1 {
		b.Fatalf("%d upstream queries, want 1", n)
	}
}

// BenchmarkQPS compares cached-answer throughput and p99 latency over
// loopback UDP: directly against the upstream, through sluice (in the
// benchmark's process, and in a process of its own like the peer), and
// through dnsmasq as a caching forwarder when dnsmasq is installed.
func BenchmarkQPS(b *testing.B) {
	up := startUpstream(b, zone("allowed.test. 300 IN A 192.0.2.10"))
	b.Run("direct-upstream", func(b *testing.B) { runQPS(b, up.addr) })
	b.Run("sluice-cached", func(b *testing.B) {
		e := newEnv(b, Config{Upstreams: []string{up.addr}}, newTestPolicy("allowed.test"))
		e.sb.Audit = nopEmitter{}
		pc, ln := listenPair(b)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- e.r.Serve(ctx, e.sb, pc, ln) }()
		defer func() { cancel(); <-done }()
		runQPS(b, pc.LocalAddr().String())
	})
	b.Run("sluice-cached-own-process", func(b *testing.B) {
		runQPS(b, startBenchServer(b, up.addr))
	})
	b.Run("dnsmasq-cached", func(b *testing.B) {
		bin, err := exec.LookPath("dnsmasq")
		if err != nil {
			b.Skip("dnsmasq not installed")
		}
		pc, ln := listenPair(b)
		addr := pc.LocalAddr().(*net.UDPAddr)
		pc.Close()
		ln.Close()
		upAddr := up.addr[:len(up.addr)-len(fmt.Sprint(portOf(up.addr)))-1]
		cmd := exec.Command(bin, "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-daemon",
			"--bind-interfaces", "--listen-address=127.0.0.1", fmt.Sprintf("--port=%d", addr.Port),
			fmt.Sprintf("--server=%s#%d", upAddr, portOf(up.addr)), "--cache-size=10000",
			"--pid-file="+filepath.Join(b.TempDir(), "pid"), "--user="+currentUser(), "--log-facility=/dev/null")
		if err := cmd.Start(); err != nil {
			b.Skipf("starting dnsmasq: %v", err)
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		waitDNS(b, addr.String())
		runQPS(b, addr.String())
	})
}

func portOf(hostport string) int {
	_, p, _ := net.SplitHostPort(hostport)
	var n int
	fmt.Sscan(p, &n)
	return n
}

func currentUser() string {
	if os.Getuid() == 0 {
		return "root"
	}
	return os.Getenv("USER")
}

func waitDNS(b *testing.B, addr string) {
	c := &dns.Client{Timeout: 100 * time.Millisecond}
	q := new(dns.Msg)
	q.SetQuestion("allowed.test.", dns.TypeA)
	for range 50 {
		if r, _, err := c.Exchange(q, addr); err == nil && len(r.Answer) > 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.Fatalf("%s never answered", addr)
}

// runQPS sends b.N queries from parallel clients, each over its own
// connected UDP socket with a prepacked query (so the client costs little
// next to the server), and reports queries/s and p99 latency.
func runQPS(b *testing.B, addr string) {
	warm := &dns.Client{Timeout: time.Second}
	q0 := new(dns.Msg)
	q0.SetQuestion("allowed.test.", dns.TypeA)
	if _, _, err := warm.Exchange(q0, addr); err != nil {
		b.Fatal(err)
	}
	wire, err := q0.Pack()
	if err != nil {
		b.Fatal(err)
	}
	var mu sync.Mutex
	var lat []time.Duration
	var id atomic.Uint32
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		conn, err := net.Dial("udp", addr)
		if err != nil {
			b.Error(err)
			return
		}
		defer conn.Close()
		q := append([]byte(nil), wire...)
		buf := make([]byte, 1500)
		mine := make([]time.Duration, 0, 1024)
		for pb.Next() {
			n := uint16(id.Add(1))
			q[0], q[1] = byte(n>>8), byte(n)
			t0 := time.Now()
			conn.SetDeadline(t0.Add(time.Second))
			if _, err := conn.Write(q); err != nil {
				b.Error(err)
				return
			}
			for {
				k, err := conn.Read(buf)
				if err != nil {
					b.Errorf("query failed: %v", err)
					return
				}
				// Id, NOERROR and one answer record.
				if k < 12 || buf[0] != q[0] || buf[1] != q[1] {
					continue // a late answer to an earlier id
				}
				if buf[3]&0xf != 0 || buf[6] != 0 || buf[7] != 1 {
					b.Errorf("bad answer %x", buf[:k])
					return
				}
				break
			}
			mine = append(mine, time.Since(t0))
		}
		mu.Lock()
		lat = append(lat, mine...)
		mu.Unlock()
	})
	elapsed := time.Since(start)
	b.StopTimer()
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "queries/s")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

type nopEmitter struct{}

func (nopEmitter) Emit(audit.Event) {}

// BenchmarkServeUDPBurst measures the UDP serve path under load: one
// client keeps 32 cached queries in flight (as dnsperf keeps 100), so the
// reader gets them in batches. One op is one query; allocs/op counts the
// server's allocations per query and the client's (none).
func BenchmarkServeUDPBurst(b *testing.B) {
	up := startUpstream(b, zone("allowed.test. 300 IN A 192.0.2.10"))
	e := newEnv(b, Config{Upstreams: []string{up.addr}}, newTestPolicy("allowed.test"))
	e.sb.Audit = nopEmitter{}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.r.Serve(ctx, e.sb, pc, nil) }()
	defer func() { cancel(); <-done }()
	waitDNS(b, pc.LocalAddr().String())
	conn, err := net.Dial("udp", pc.LocalAddr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	q := new(dns.Msg)
	q.SetQuestion("allowed.test.", dns.TypeA)
	wire, err := q.Pack()
	if err != nil {
		b.Fatal(err)
	}
	const inFlight = 32
	buf := make([]byte, 1500)
	send := func() {
		if _, err := conn.Write(wire); err != nil {
			b.Fatal(err)
		}
	}
	for range inFlight {
		send()
	}
	b.ReportAllocs()
	for b.Loop() {
		conn.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := conn.Read(buf); err != nil {
			b.Fatal(err)
		}
		send()
	}
	for range inFlight {
		conn.Read(buf)
	}
}
