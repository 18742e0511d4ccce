package daemon

import (
	"crypto/ed25519"
	"log/slog"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/enforcer"
	"github.com/sluice-dev/sluice/pkg/secrets"
)

// RuntimeOptions are what the daemon and `sluice run` (pkg/runner) decide
// about the components their sandboxes share.
type RuntimeOptions struct {
	DNSUpstreams []string // empty: from /etc/resolv.conf
	// DNSAllowLoopback lets loopback addresses in upstream answers through.
	DNSAllowLoopback bool
	UpstreamCAs      []string // PEM files trusted for upstream TLS besides the system roots
	PinDir           string   // "": enforcer.DefaultPinDir
	Secrets          *secrets.Chain
	// Store receives rotated oauth2 refresh tokens; nil keeps them in
	// memory.
	Store *secrets.Store
	// Signer signs credential callback requests; nil when no policy has
	// callbacks.
	Signer ed25519.PrivateKey
	Audit  audit.Emitter
}

// NewRuntime opens the components every sandbox shares: the resolver, the
// proxy, the eBPF programs (loaded or re-adopted from the pins) and the
// credential helpers. Close must be called.
func NewRuntime(o RuntimeOptions, log *slog.Logger) (*Runtime, error) {
	resolver, px, err := newResolverAndProxy(o.DNSUpstreams, o.DNSAllowLoopback, o.UpstreamCAs, log)
	if err != nil {
		return nil, err
	}
	enf, err := enforcer.Open(enforcer.Config{PinDir: o.PinDir}, log.With("component", "enforcer"))
	if err != nil {
		px.Close()
		return nil, err
	}
	rt := &Runtime{
		Log: log, Enforcer: enf, Resolver: resolver, Proxy: px,
		Secrets:   o.Secrets,
		Callbacks: secrets.NewCallbacks(o.Signer, nil, log.With("component", "callback")),
		Audit:     o.Audit,
	}
	if err := rt.setCredentials(o.Secrets, o.Store, o.UpstreamCAs); err != nil {
		rt.Close()
		return nil, err
	}
	return rt, nil
}

// Close closes the proxy and the enforcer. Sandboxes stay registered
// (pinned) in the kernel.
func (rt *Runtime) Close() {
	rt.closeShared()
	rt.Proxy.Close()
	rt.Enforcer.Close()
}
