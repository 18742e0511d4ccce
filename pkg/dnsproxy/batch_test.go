package dnsproxy

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/testutil"
)

// TestUDPBatches sends bursts of queries without waiting, so that the
// reader gets them in batches, on IPv4 and IPv6 loopback: fast path hits,
// refused names and malformed messages mixed. Every query gets exactly one
// answer with its id and the right rcode and exactly one audit event, and
// nothing disallowed reaches the upstream. Answers grouped for
// UDP_SEGMENT arrive as datagrams of their own, at their own peer.
func TestUDPBatches(t *testing.T) {
	up := startUpstream(t, zone("allowed.test. 300 IN A 192.0.2.10"))
	for _, host := range []string{"127.0.0.1", "::1"} {
		t.Run(host, func(t *testing.T) { testUDPBatches(t, up, host, nil) })
	}
}

// testUDPBatches is TestUDPBatches on one address; setup, if not nil,
// adjusts the server's socket first.
func testUDPBatches(t *testing.T, up *upstream, host string, setup func(*testing.T, *net.UDPConn)) {
	e := newEnv(t, Config{Upstreams: []string{up.addr}}, newTestPolicy("allowed.test"))
	origins := &originRec{}
	e.sb.Origins = origins
	pc, err := net.ListenPacket("udp", net.JoinHostPort(host, "0"))
	if err != nil {
		testutil.KernelLacks(t, "no %s to listen on: %v", host, err)
	}
	if setup != nil {
		setup(t, pc.(*net.UDPConn))
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.r.Serve(ctx, e.sb, pc, nil) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	// Two clients. In the first half of a burst they take turns, so
	// adjacent answers of one size go to different peers and must not be
	// sent as one group; in the second half client 0 sends alone, all
	// without EDNS, so its answers are one size and do form groups.
	var clients [2]net.Conn
	for ci := range clients {
		c, err := net.Dial("udp", pc.LocalAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients[ci] = c
	}

	kinds := []struct {
		name  string
		rcode int // -1: no answer expected
	}{
		{"allowed.test.", dns.RcodeSuccess},
		{"ALLOWED.test.", dns.RcodeSuccess},
		{"denied.test.", dns.RcodeNameError},
		{"", dns.RcodeFormatError}, // header only, no question
		{"short", -1},              // not a DNS header: dropped
	}
	const rounds, burst = 4, 100
	type answer struct{ rcode, client int }
	want := map[uint16]answer{}
	sent := 0
	id := uint16(1)
	for range rounds {
		var expect [2]int
		for i := range burst {
			k := kinds[i%len(kinds)]
			ci, edns := i%2, i/len(kinds)%2 == 0
			if i >= burst/2 {
				ci, edns = 0, false
			}
			var wire []byte
			switch k.name {
			case "short":
				wire = []byte{0, 0, 1}
			case "":
				wire = []byte{byte(id >> 8), byte(id), 1, 0, 0, 0, 0, 0, 0, 0, 0, 0}
			default:
				q := new(dns.Msg)
				q.SetQuestion(k.name, dns.TypeA)
				q.Id = id
				if edns {
					q.SetEdns0(1232, false)
				}
				if wire, err = q.Pack(); err != nil {
					t.Fatal(err)
				}
			}
			if k.rcode >= 0 {
				want[id] = answer{k.rcode, ci}
				expect[ci]++
			}
			id++
			sent++
			if _, err := clients[ci].Write(wire); err != nil {
				t.Fatal(err)
			}
		}
		// Collect this burst's answers before the next one, so the
		// socket buffers never overflow.
		buf := make([]byte, 4096)
		for ci, c := range clients {
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			for range expect[ci] {
				n, err := c.Read(buf)
				if err != nil {
					t.Fatalf("client %d: %d answers missing: %v", ci, len(want), err)
				}
				m := new(dns.Msg)
				if err := m.Unpack(buf[:n]); err != nil {
					t.Fatalf("answer does not unpack: %v", err)
				}
				a, ok := want[m.Id]
				if !ok || a.client != ci {
					t.Fatalf("client %d: unexpected or second answer to id %d (%+v)", ci, m.Id, a)
				}
				delete(want, m.Id)
				if m.Rcode != a.rcode {
					t.Errorf("id %d: rcode %s, want %s", m.Id, dns.RcodeToString[m.Rcode], dns.RcodeToString[a.rcode])
				}
				if a.rcode == dns.RcodeSuccess && len(m.Answer) != 1 {
					t.Errorf("id %d: answer %v", m.Id, m)
				}
			}
		}
	}
	if len(want) != 0 {
		t.Fatalf("%d queries unanswered", len(want))
	}
	e.ev.Wait(t, "one event per query", func(evs []audit.Event) bool { return len(evs) >= sent })
	evs := e.ev.all()
	if len(evs) != sent {
		t.Fatalf("%d events for %d queries", len(evs), sent)
	}
	for _, ev := range evs {
		if ev.Kind != audit.KindDNS || ev.Sandbox != "sb1" || ev.PID != 7 {
			t.Fatalf("event %+v", ev)
		}
	}
	// The origin of every query was looked up by the client's
	// address (the kernel's record is keyed by its port).
	for _, ap := range origins.all() {
		c0 := clients[0].LocalAddr().(*net.UDPAddr).AddrPort()
		c1 := clients[1].LocalAddr().(*net.UDPAddr).AddrPort()
		if ap.Addr().Unmap() != c0.Addr().Unmap() || ap.Port() != c0.Port() && ap.Port() != c1.Port() {
			t.Fatalf("origin looked up for %v, clients are %v and %v", ap, c0, c1)
		}
	}
	if n := len(origins.all()); n != sent {
		t.Fatalf("%d origin lookups for %d queries", n, sent)
	}
	for _, l := range up.queries() {
		if !strings.HasPrefix(l, "allowed.test. ") {
			t.Errorf("upstream saw %q", l)
		}
	}
}

// originRec answers every origin lookup with pid 7 and records the client
// and whether it was asked about TCP.
type originRec struct {
	mu      sync.Mutex
	clients []netip.AddrPort
	tcp     []bool
}

func (o *originRec) QueryOrigin(client netip.AddrPort, tcp bool) (uint32, string, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.clients = append(o.clients, client)
	o.tcp = append(o.tcp, tcp)
	return 7, "dig", true
}

// tcpAsked returns the tcp flags of the lookups so far.
func (o *originRec) tcpAsked() []bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]bool(nil), o.tcp...)
}

func (o *originRec) all() []netip.AddrPort {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]netip.AddrPort(nil), o.clients...)
}
