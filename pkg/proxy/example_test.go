package proxy_test

import (
	"context"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/policy"
	"github.com/sluice-dev/sluice/pkg/proxy"
	"github.com/sluice-dev/sluice/pkg/tlsca"
)

// Wiring one sandbox: the kernel redirects its TCP connects to ln; orig,
// names, secrets and callbacks come from the enforcer, the resolver's
// bindings and the secret store.
func ExampleProxy_Serve() {
	var (
		orig    proxy.OriginalDst // enforcer: LookupAndDelete of the original destination
		names   proxy.NameLookup  // resolver bindings of this sandbox
		secrets proxy.Secrets     // secret store / provider chain
		cbs     proxy.Callbacks   // credential callbacks (cached per TTL)
	)
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	pol, err := policy.Load("policy.yaml")
	if err != nil {
		log.Error("policy", "err", err)
		return
	}
	ca, rotated, err := tlsca.LoadOrCreate("/var/lib/sluice/sandboxes/sb1/ca", "sb1", 30*24*time.Hour)
	if err != nil {
		log.Error("ca", "err", err)
		return
	}
	if rotated {
		roots, _ := tlsca.SystemRootsPEM()
		_ = os.WriteFile("/run/sluice/sb1/ca-bundle.pem", tlsca.Bundle(roots, ca), 0o644) // SSL_CERT_FILE etc.
	}
	roots, err := proxy.RootPool("/etc/sluice/internal-ca.pem")
	if err != nil {
		log.Error("roots", "err", err)
		return
	}
	p := proxy.New(proxy.Config{RootCAs: roots}, log.With("component", "proxy"))
	defer p.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Error("listen", "err", err)
		return
	}
	sb := &proxy.Sandbox{
		Name: "sb1", ID: 1234,
		Policy: func() *policy.Policy { return pol },
		Orig:   orig, Names: names, CA: ca,
		Secrets: secrets, Callbacks: cbs,
		Audit: audit.Discard{},
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := p.Serve(ctx, sb, ln); err != nil {
		log.Error("proxy stopped", "err", err)
	}
}
