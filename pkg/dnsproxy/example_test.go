package dnsproxy_test

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/dnsproxy"
	"github.com/sluice-dev/sluice/pkg/policy"
)

// kernelAllowlist stands in for the enforcer's per-sandbox map.
type kernelAllowlist struct{}

func (kernelAllowlist) Allow(addr netip.Addr, until time.Time, direct bool) error { return nil }

// Wiring one sandbox: one Resolver for all sandboxes, one Serve per
// sandbox on the listeners its DNS is redirected to.
func ExampleResolver_Serve() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "dnsproxy")
	upstreams, err := dnsproxy.UpstreamsFromResolvConf("/etc/resolv.conf")
	if err != nil {
		log.Error("no upstreams", "err", err)
		return
	}
	r, err := dnsproxy.New(dnsproxy.Config{Upstreams: upstreams}, log)
	if err != nil {
		log.Error("resolver", "err", err)
		return
	}
	var pol *policy.Policy // from policy.Load; swap it to replace the policy live
	sb := &dnsproxy.Sandbox{
		Name:     "build-42",
		ID:       12345, // cgroup id
		Policy:   func() *policy.Policy { return pol },
		Allow:    kernelAllowlist{},
		Bindings: dnsproxy.NewBindings(0, 0), // shared with the proxy: Names(addr)
		Audit:    audit.Discard{},
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return
	}
	ln, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := r.Serve(ctx, sb, pc, ln); err != nil {
		log.Error("dns", "err", err)
	}
}
