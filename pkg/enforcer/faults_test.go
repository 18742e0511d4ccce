package enforcer

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/sluice-dev/sluice/pkg/dnsproxy"
	"github.com/sluice-dev/sluice/pkg/policy"
	"github.com/sluice-dev/sluice/pkg/testutil"
	"golang.org/x/sys/unix"
)

// TestFaultAllowlistFull fills the kernel allowlist to its capacity (issue
// 10, fault injection). With the map full, the resolver must answer
// SERVFAIL for a newly allowed name (never an answer the kernel would not
// honour) and the sandbox must stay closed for that address; once entries
// are freed, the same query succeeds and the address is redirected.
func TestFaultAllowlistFull(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: fills a 512Ki-entry map (about 50 s); a length skip, not a missing privilege (make test runs it)")
	}
	f := setup(t, false)
	target := testutil.TCPCanary(t, "tcp4") // 127.0.0.1:P, the name's address

	// Fill the map with addresses of this sandbox until the kernel refuses:
	// in batches (one bpf(2) call per 4096 entries, the same keys and
	// values Allow writes), then once through Allow, which must refuse
	// too. Written one by one (a lookup and an update each), the 512Ki
	// entries took 50 s, and 2-5 minutes under -race on 2 loaded cores.
	// The filled entries stay out of the enforcer's allow index: a
	// cleanup deletes them in batches before Detach runs.
	start := time.Now()
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}) }
	until := time.Now().Add(time.Hour)
	const batch = 4096
	keys := make([]sluiceAllowKey, batch)
	vals := make([]sluiceAllowVal, batch)
	var filled []sluiceAllowKey
	var batchErr error
	for len(filled) < 1<<20 && batchErr == nil {
		exp := monoAt(until)
		for j := range keys {
			keys[j] = sluiceAllowKey{Prefixlen: 64 + 128, Addr: addrKey(addr(len(filled) + j))}
			binary.NativeEndian.PutUint64(keys[j].Sandbox[:], f.sb.ID())
			vals[j] = sluiceAllowVal{ExpiresNs: exp}
		}
		var n int
		n, batchErr = f.e.objs.Allow.BatchUpdate(keys, vals, nil)
		filled = append(filled, keys[:n]...)
	}
	t.Cleanup(func() {
		for len(filled) > 0 {
			n := min(batch, len(filled))
			if _, err := f.e.objs.Allow.BatchDelete(filled[:n], nil); err != nil {
				t.Errorf("deleting the filled entries: %v", err)
				return
			}
			filled = filled[n:]
		}
	})
	if !errors.Is(batchErr, unix.ENOSPC) {
		t.Fatalf("the allowlist took %d entries, then: %v; want ENOSPC (full)", len(filled), batchErr)
	}
	fullErr := f.sb.Allow(addr(len(filled)), until, false)
	if fullErr == nil {
		t.Fatalf("Allow wrote entry %d into a full allowlist", len(filled)+1)
	}
	t.Logf("allowlist full after %d entries (%v): %v", len(filled), time.Since(start), fullErr)
	counted := time.Now()
	if got := f.e.AllowCount(); got < len(filled) {
		t.Fatalf("AllowCount %d < %d written", got, len(filled))
	}
	t.Logf("AllowCount of the full map in %v", time.Since(counted))

	// A resolver for this sandbox, forwarding to a loopback upstream that
	// knows the name.
	up, err := testutil.StartDNS(map[string][]string{"full.test": {"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Close)
	pol, err := policy.Parse("full.yaml", []byte("version: 1\nrules:\n  - name: f\n    hosts: [full.test]\n"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := dnsproxy.New(dnsproxy.Config{Upstreams: []string{up.Addr}, AllowLoopback: true}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	// UDP and TCP on one port; the TCP port may be taken: try again.
	var pc net.PacketConn
	var ln net.Listener
	for i := 0; ; i++ {
		if pc, err = net.ListenPacket("udp4", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp4", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
		if i == 20 {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() {
		defer close(served)
		r.Serve(ctx, &dnsproxy.Sandbox{Name: "full", ID: f.sb.ID(), Policy: func() *policy.Policy { return pol }, Allow: f.sb}, pc, ln)
	}()
	t.Cleanup(func() { cancel(); <-served })
	query := func() (int, int) {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion("full.test.", dns.TypeA)
		c := &dns.Client{Timeout: 5 * time.Second}
		var resp *dns.Msg
		var err error
		for i := 0; i < 3; i++ {
			if resp, _, err = c.Exchange(m, pc.LocalAddr().String()); err == nil {
				break
			}
		}
		if err != nil {
			t.Fatalf("query: %v", err)
		}
		return resp.Rcode, len(resp.Answer)
	}

	rcode, n := query()
	if rcode != dns.RcodeServerFailure || n != 0 {
		t.Fatalf("with the allowlist full: rcode %s with %d answers, want SERVFAIL and none", dns.RcodeToString[rcode], n)
	}
	if out := testutil.RunProbe(t, f.cg, "tcp", target.Addr); !strings.HasPrefix(out, "error EPERM") {
		t.Fatalf("with the allowlist full, connect to the name's address: %q, want EPERM", out)
	}
	if target.Hits() != 0 {
		t.Fatal("the address was reached while its allowlist write failed")
	}

	// Recovery: free some entries (as expiry + GC would) and ask again.
	for _, k := range filled[:1024] {
		if err := f.sb.Revoke(netip.AddrFrom16(k.Addr).Unmap()); err != nil {
			t.Fatal(err)
		}
	}
	filled = filled[1024:] // what the cleanup deletes
	rcode, n = query()
	if rcode != dns.RcodeSuccess || n != 1 {
		t.Fatalf("after freeing entries: rcode %s with %d answers, want NOERROR and 1", dns.RcodeToString[rcode], n)
	}
	select {
	case <-f.origin:
	default:
	}
	if out := testutil.RunProbe(t, f.cg, "tcp", target.Addr); !strings.HasPrefix(out, "ok proxied") {
		t.Fatalf("after recovery, connect: %q, want the redirect to the proxy", out)
	}
	if target.Hits() != 0 {
		t.Fatal("the connection went straight to the target instead of the proxy")
	}
}
