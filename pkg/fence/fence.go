// Package fence bounds what one sandbox may hold in the daemon: concurrent
// proxied connections, upstream connections, bytes of unfinished request
// heads, and DNS queries per second. Each sandbox has its own Sandbox, so
// one sandbox at a fence never affects another.
//
// A *Sandbox is safe for concurrent use; a nil *Sandbox fences nothing.
// Every Acquire that returns true must be paired with one Release, and every
// successful Charge with an Uncharge of the same amount.
package fence

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-dev/sluice/pkg/policy"
)

// Kind names a fence.
type Kind int

// The fences, named as in the policy's limits block.
const (
	Connections Kind = iota
	UpstreamConnections
	RequestHeadBytes
	DNSQPS
	numKinds
)

func (k Kind) String() string {
	switch k {
	case Connections:
		return "connections"
	case UpstreamConnections:
		return "upstream_connections"
	case RequestHeadBytes:
		return "request_head_bytes"
	case DNSQPS:
		return "dns_qps"
	}
	return "unknown"
}

// Refusal is one piece of work refused at a fence.
type Refusal struct {
	Kind  Kind
	Limit int64          // the fence's limit at the time
	Dst   netip.AddrPort // the destination asked for, when known
	UDP   bool
}

// Sandbox holds one sandbox's fences.
type Sandbox struct {
	// Limits returns the current limits; it is read at every decision, so
	// a policy reload applies at once. Required.
	Limits func() policy.Limits
	// Refused is called once per refusal (audit event, metric, kernel
	// counter). It may be nil.
	Refused func(Refusal)

	conns, upstreams, head atomic.Int64
	refused                [numKinds]atomic.Uint64

	mu     sync.Mutex // guards the DNS token bucket below
	tokens float64
	last   time.Time
}

// New returns the fences of one sandbox.
func New(limits func() policy.Limits, refused func(Refusal)) *Sandbox {
	return &Sandbox{Limits: limits, Refused: refused}
}

// Refuse counts and reports one refusal at fence k: the caller found the
// fence closed (Acquire, Charge or Query returned false) and refused the
// work; dst is the destination asked for, when known.
func (s *Sandbox) Refuse(k Kind, dst netip.AddrPort, udp bool) {
	if s == nil {
		return
	}
	s.refused[k].Add(1)
	if s.Refused == nil {
		return
	}
	lim := s.Limits()
	r := Refusal{Kind: k, Dst: dst, UDP: udp}
	switch k {
	case Connections:
		r.Limit = int64(lim.Connections)
	case UpstreamConnections:
		r.Limit = int64(lim.UpstreamConnections)
	case RequestHeadBytes:
		r.Limit = lim.RequestHeadBytes
	case DNSQPS:
		r.Limit = int64(lim.DNSQPS)
	}
	s.Refused(r)
}

// Acquire takes one connection (Connections) or one upstream connection
// (UpstreamConnections) if the fence allows it. On false the caller
// refuses the work and calls Refuse.
func (s *Sandbox) Acquire(k Kind) bool {
	if s == nil {
		return true
	}
	lim := s.Limits()
	c, max := &s.conns, int64(lim.Connections)
	if k == UpstreamConnections {
		c, max = &s.upstreams, int64(lim.UpstreamConnections)
	}
	if c.Add(1) > max {
		c.Add(-1)
		return false
	}
	return true
}

// Release gives back what Acquire(k) took.
func (s *Sandbox) Release(k Kind) {
	if s == nil {
		return
	}
	if k == UpstreamConnections {
		s.upstreams.Add(-1)
	} else {
		s.conns.Add(-1)
	}
}

// Charge adds n bytes of unfinished request heads, or returns false
// (charging nothing) when they would pass the fence.
func (s *Sandbox) Charge(n int64) bool {
	if s == nil || n <= 0 {
		return true
	}
	max := s.Limits().RequestHeadBytes
	if s.head.Add(n) > max {
		s.head.Add(-n)
		return false
	}
	return true
}

// Uncharge gives back n bytes Charge took.
func (s *Sandbox) Uncharge(n int64) {
	if s != nil && n > 0 {
		s.head.Add(-n)
	}
}

// Query takes one DNS query from the token bucket (refilled at dns_qps per
// second, holding at most one second's worth), or returns false.
func (s *Sandbox) Query(now time.Time) bool {
	if s == nil {
		return true
	}
	qps := float64(s.Limits().DNSQPS)
	s.mu.Lock()
	if s.last.IsZero() {
		s.tokens = qps
	} else if d := now.Sub(s.last); d > 0 {
		s.tokens = min(qps, s.tokens+d.Seconds()*qps)
	}
	s.last = now
	ok := s.tokens >= 1
	if ok {
		s.tokens--
	}
	s.mu.Unlock()
	return ok
}

// Usage is a snapshot of a sandbox's fences.
type Usage struct {
	Connections, UpstreamConnections, RequestHeadBytes int64
	Refused                                            [numKinds]uint64
}

// Usage returns what the sandbox holds now and how much was refused.
func (s *Sandbox) Usage() Usage {
	var u Usage
	if s == nil {
		return u
	}
	u.Connections, u.UpstreamConnections, u.RequestHeadBytes = s.conns.Load(), s.upstreams.Load(), s.head.Load()
	for i := range u.Refused {
		u.Refused[i] = s.refused[i].Load()
	}
	return u
}
