package dnsproxy

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-dev/sluice/pkg/fence"
	"github.com/sluice-dev/sluice/pkg/policy"
)

// TestDNSQPSFence: past the sandbox's dns_qps fence, UDP queries are
// dropped and others answered REFUSED, each refusal reported once.
func TestDNSQPSFence(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, zone("allowed.test. 300 IN A 192.0.2.10"))
	e := newEnv(t, Config{Upstreams: []string{up.addr}}, newTestPolicy("allowed.test"))
	refused := 0
	e.sb.Fence = fence.New(func() policy.Limits { return policy.Limits{DNSQPS: 5} }, func(r fence.Refusal) {
		if r.Kind == fence.DNSQPS && r.Limit == 5 {
			refused++ // the handler calls it from the serving goroutine
		}
	})

	// Through the handler (TCP and the slow path): five answers, then REFUSED.
	rcodes := map[int]int{}
	for i := 0; i < 8; i++ {
		rcodes[e.query(t, "allowed.test", dns.TypeA).Rcode]++
	}
	if rcodes[dns.RcodeSuccess] != 5 || rcodes[dns.RcodeRefused] != 3 || refused != 3 {
		t.Fatalf("rcodes %v, %d refusals reported; want 5 answers and 3 REFUSED", rcodes, refused)
	}

	// UDP, on a sandbox with a fresh bucket: a burst of 30 gets 10 answers.
	e2 := newEnv(t, Config{Upstreams: []string{up.addr}}, newTestPolicy("allowed.test"))
	f := fence.New(func() policy.Limits { return policy.Limits{DNSQPS: 10} }, nil)
	e2.sb.Fence = f
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e2.r.Serve(ctx, e2.sb, pc, nil) }()
	t.Cleanup(func() { cancel(); pc.Close(); <-done })
	c, err := net.Dial("udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const burst = 30
	for i := 0; i < burst; i++ {
		q := new(dns.Msg)
		q.SetQuestion("allowed.test.", dns.TypeA)
		q.Id = uint16(i + 1)
		b, _ := q.Pack()
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	answered := 0
	buf := make([]byte, 1500)
	deadline := time.Now().Add(10 * time.Second)
	for answered+int(f.Usage().Refused[fence.DNSQPS]) < burst {
		if time.Now().After(deadline) {
			t.Fatalf("after %d answers and %d refusals: no more answers", answered, f.Usage().Refused[fence.DNSQPS])
		}
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		n, err := c.Read(buf)
		if err != nil {
			continue // a refusal may still be on its way: check again
		}
		var m dns.Msg
		if m.Unpack(buf[:n]) == nil && m.Rcode == dns.RcodeSuccess {
			answered++
		}
	}
	// The bucket refills while the burst is read: at least the first
	// second's worth, never the whole burst.
	if answered < 10 || answered >= burst {
		t.Fatalf("%d of %d queries answered with dns_qps 10", answered, burst)
	}
}
