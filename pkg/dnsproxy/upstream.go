package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// forwarder asks the upstream resolvers, in order, starting with the last
// one that answered.
type forwarder struct {
	upstreams []string
	timeout   time.Duration
	udpSize   uint16
	udp, tcp  *dns.Client
	preferred atomic.Uint32
}

func newForwarder(cfg Config) *forwarder {
	return &forwarder{
		upstreams: cfg.Upstreams,
		timeout:   cfg.Timeout,
		udpSize:   cfg.UDPSize,
		udp:       &dns.Client{Net: "udp", UDPSize: cfg.UDPSize},
		tcp:       &dns.Client{Net: "tcp"},
	}
}

// errUpstream marks an answer an upstream gave that sluice will not use.
var errUpstream = errors.New("unusable upstream answer")

// exchange resolves name (normalised, no trailing dot) and qtype within the
// forwarder's timeout. It returns a NOERROR or NXDOMAIN response or an error.
func (f *forwarder) exchange(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), qtype)
	q.RecursionDesired = true
	q.SetEdns0(f.udpSize, false)

	n := len(f.upstreams)
	start := int(f.preferred.Load()) % n
	var errs []error
	for i := range n {
		idx := (start + i) % n
		dl, _ := ctx.Deadline()
		remaining := time.Until(dl)
		if remaining <= 0 {
			errs = append(errs, context.DeadlineExceeded)
			break
		}
		// Share what is left among the upstreams not yet tried, so a dead
		// first upstream cannot use up the whole budget.
		actx, acancel := context.WithTimeout(ctx, remaining/time.Duration(n-i))
		r, err := f.try(actx, q, f.upstreams[idx])
		acancel()
		if err == nil {
			f.preferred.Store(uint32(idx))
			return r, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", f.upstreams[idx], err))
	}
	return nil, errors.Join(errs...)
}

// try asks one upstream over UDP, then over TCP if the answer was truncated.
func (f *forwarder) try(ctx context.Context, q *dns.Msg, addr string) (*dns.Msg, error) {
	q.Id = dns.Id()
	r, _, err := f.udp.ExchangeContext(ctx, q, addr)
	if err == nil && r.Truncated {
		q.Id = dns.Id()
		r, _, err = f.tcp.ExchangeContext(ctx, q, addr)
	}
	if err != nil {
		return nil, err
	}
	if !r.Response || r.Truncated || len(r.Question) != 1 ||
		r.Question[0].Qtype != q.Question[0].Qtype ||
		!strings.EqualFold(r.Question[0].Name, q.Question[0].Name) {
		return nil, fmt.Errorf("%w: question mismatch or truncated", errUpstream)
	}
	if r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError {
		return nil, fmt.Errorf("%w: rcode %s", errUpstream, dns.RcodeToString[r.Rcode])
	}
	return r, nil
}
