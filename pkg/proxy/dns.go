package proxy

import (
	"context"
	"net"

	"github.com/sluice-dev/sluice/pkg/policy"
)

// dnsPort is the original destination port of DNS over TCP: the kernel
// redirects a sandbox's TCP connections to it to the proxy, which hands them
// to the sandbox's resolver (Sandbox.DNS) instead of deciding them.
const dnsPort = 53

type originKey struct{}

// OriginFromContext returns the Origin of the connection that Sandbox.DNS
// serves, from the context DNS receives. The kernel's record of the
// connection was consumed when the proxy looked it up, so the resolver
// cannot ask for it again.
func OriginFromContext(ctx context.Context) (Origin, bool) {
	o, ok := ctx.Value(originKey{}).(Origin)
	return o, ok
}

// serveDNS hands c, a connection to port 53, to the sandbox's resolver and
// closes it when the resolver returns; c stays tracked meanwhile, so that
// shutdown closes it. It reports whether c was handed off (then the
// resolver records its queries and no connection event is emitted).
// Without a resolver c is refused: the caller closes it and records the
// denial.
func (s *server) serveDNS(ctx context.Context, c net.Conn, ci *connInfo) bool {
	if s.sb.DNS == nil {
		ci.verdict = policy.VerdictDeny
		ci.reason = "DNS over TCP without a resolver"
		return false
	}
	defer func() {
		c.Close()
		s.untrack(c)
	}()
	s.sb.DNS(context.WithValue(ctx, originKey{}, ci.orig), c)
	return true
}
