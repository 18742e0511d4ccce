package dnsproxy

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-dev/sluice/pkg/fence"
	"github.com/sluice-dev/sluice/pkg/policy"
)

// TestDNSQPSFence: past the sandbox's dns_qps fence, every query (UDP and
// TCP) is answered REFUSED, with an Extended DNS Error naming the limit for
// EDNS0 clients, and each refusal is reported once; no query goes
// unanswered.
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

	// UDP, on a sandbox with a fresh bucket: a burst of 30 gets about 10
	// answers and a REFUSED for each of the others.
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
		if i%2 == 0 {
			q.SetEdns0(1232, false)
		}
		b, _ := q.Pack()
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	answered, refusedUDP := 0, 0
	seen := map[uint16]bool{}
	buf := make([]byte, 1500)
	deadline := time.Now().Add(10 * time.Second)
	for len(seen) < burst {
		if time.Now().After(deadline) {
			t.Fatalf("after %d answers and %d REFUSED of %d queries: no more replies (a query was dropped)", answered, refusedUDP, burst)
		}
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := c.Read(buf)
		if err != nil {
			continue
		}
		var m dns.Msg
		if err := m.Unpack(buf[:n]); err != nil || seen[m.Id] {
			t.Fatalf("reply %d unparsable or repeated: %v", m.Id, err)
		}
		seen[m.Id] = true
		switch m.Rcode {
		case dns.RcodeSuccess:
			answered++
		case dns.RcodeRefused:
			refusedUDP++
			if len(m.Question) != 1 || m.Question[0].Name != "allowed.test." {
				t.Errorf("REFUSED %d does not echo the question: %v", m.Id, m.Question)
			}
			ede := ""
			if opt := m.IsEdns0(); opt != nil {
				for _, o := range opt.Option {
					if e, ok := o.(*dns.EDNS0_EDE); ok {
						ede = e.ExtraText
					}
				}
			}
			if wantEDE := m.Id%2 == 1; wantEDE != strings.Contains(ede, "dns_qps") {
				t.Errorf("REFUSED %d: extended error %q; want one naming dns_qps only for EDNS0 queries", m.Id, ede)
			}
		default:
			t.Fatalf("reply %d: rcode %s", m.Id, dns.RcodeToString[m.Rcode])
		}
	}
	// The bucket refills while the burst is read: at least the first
	// second's worth, never the whole burst.
	if answered < 10 || answered >= burst {
		t.Fatalf("%d of %d queries answered with dns_qps 10", answered, burst)
	}
	if got := f.Usage().Refused[fence.DNSQPS]; got != uint64(refusedUDP) {
		t.Fatalf("%d REFUSED answers, %d refusals counted", refusedUDP, got)
	}
}
