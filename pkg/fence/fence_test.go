package fence

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/policy"
)

func TestConnectionsFence(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var got []Refusal
	s := New(func() policy.Limits {
		return policy.Limits{Connections: 3, UpstreamConnections: 1, RequestHeadBytes: 100, DNSQPS: 2}
	},
		func(r Refusal) { mu.Lock(); got = append(got, r); mu.Unlock() })
	dst := netip.MustParseAddrPort("192.0.2.1:443")
	for i := 0; i < 3; i++ {
		if !s.Acquire(Connections) {
			t.Fatalf("connection %d refused under the limit", i)
		}
	}
	if s.Acquire(Connections) {
		t.Fatal("the 4th connection passed a fence of 3")
	}
	s.Refuse(Connections, dst, false)
	s.Release(Connections)
	if !s.Acquire(Connections) {
		t.Fatal("a released slot was not reusable")
	}
	if !s.Acquire(UpstreamConnections) || s.Acquire(UpstreamConnections) {
		t.Fatal("upstream fence of 1 not enforced")
	}
	s.Refuse(UpstreamConnections, dst, false)
	if !s.Charge(60) || s.Charge(60) {
		t.Fatal("head bytes fence of 100 not enforced")
	}
	s.Refuse(RequestHeadBytes, dst, false)
	s.Uncharge(60)
	if !s.Charge(100) {
		t.Fatal("uncharged bytes not given back")
	}
	if len(got) != 3 || got[0].Kind != Connections || got[0].Limit != 3 || got[0].Dst != dst || got[1].Kind != UpstreamConnections || got[2].Kind != RequestHeadBytes {
		t.Fatalf("refusals %+v", got)
	}
	u := s.Usage()
	if u.Connections != 3 || u.UpstreamConnections != 1 || u.RequestHeadBytes != 100 || u.Refused[Connections] != 1 {
		t.Fatalf("usage %+v", u)
	}
}

func TestDNSRate(t *testing.T) {
	t.Parallel()
	s := New(func() policy.Limits { return policy.Limits{DNSQPS: 10} }, nil)
	now := time.Unix(1000, 0)
	ok := 0
	for i := 0; i < 50; i++ {
		if s.Query(now) {
			ok++
		} else {
			s.Refuse(DNSQPS, netip.AddrPort{}, true)
		}
	}
	if ok != 10 {
		t.Fatalf("%d queries passed in one instant, want a burst of 10", ok)
	}
	// Half a second refills five.
	ok = 0
	for i := 0; i < 50; i++ {
		if s.Query(now.Add(500 * time.Millisecond)) {
			ok++
		} else {
			s.Refuse(DNSQPS, netip.AddrPort{}, true)
		}
	}
	if ok != 5 {
		t.Fatalf("%d queries passed after 500ms, want 5", ok)
	}
	if s.Usage().Refused[DNSQPS] != 85 {
		t.Fatalf("refused %d, want 85", s.Usage().Refused[DNSQPS])
	}
}

func TestNilFencesNothing(t *testing.T) {
	t.Parallel()
	var s *Sandbox
	if !s.Acquire(Connections) || !s.Charge(1<<40) || !s.Query(time.Now()) {
		t.Fatal("a nil fence refused")
	}
	s.Release(Connections)
	s.Uncharge(1)
	s.Refuse(Connections, netip.AddrPort{}, false)
}

// TestSandboxesIndependent: one sandbox at its fence leaves another's
// untouched.
func TestSandboxesIndependent(t *testing.T) {
	t.Parallel()
	lim := func() policy.Limits { return policy.Limits{Connections: 2, DNSQPS: 1} }
	a, b := New(lim, nil), New(lim, nil)
	a.Acquire(Connections)
	a.Acquire(Connections)
	now := time.Now()
	a.Query(now)
	if a.Acquire(Connections) || a.Query(now) {
		t.Fatal("a is not at its fence")
	}
	if !b.Acquire(Connections) || !b.Query(now) {
		t.Fatal("b was refused because of a")
	}
}
