package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/dnsproxy"
	"github.com/sluice-dev/sluice/pkg/enforcer"
	"github.com/sluice-dev/sluice/pkg/policy"
	"github.com/sluice-dev/sluice/pkg/proxy"
	"github.com/sluice-dev/sluice/pkg/tlsca"
)

// Compile-time checks: the enforcer's sandbox is what the resolver and the
// proxy need from the kernel.
var (
	_ dnsproxy.Allowlister = (*enforcer.Sandbox)(nil)
	_ dnsproxy.Revoker     = (*enforcer.Sandbox)(nil)
)

// Runtime holds the host-wide components every sandbox shares. Its fields
// are set once before the first Start and not changed after.
type Runtime struct {
	Log       *slog.Logger
	Enforcer  *enforcer.Enforcer
	Resolver  *dnsproxy.Resolver
	Proxy     *proxy.Proxy
	Secrets   proxy.Secrets
	Callbacks proxy.Callbacks
	Tokens    proxy.Tokens        // oauth2 rules (setCredentials)
	Signer    proxy.RequestSigner // aws_sigv4 rules (setCredentials)
	Audit     audit.Emitter

	mu    sync.Mutex
	byID  map[uint64]*Sandbox
	names map[string]*Sandbox
	// shared: the listeners of the host namespace's sandboxes (shared.go),
	// opened at the first such Start; starting: the shared sandboxes whose
	// Start is between their kernel registration and serving.
	shared   *sharedListeners
	starting map[uint64]chan struct{}
}

// Spec describes a sandbox to start.
type Spec struct {
	Name       string
	CgroupPath string
	CgroupID   uint64
	Policy     *policy.Policy
	CA         *tlsca.CA
	// InNetns, when set, runs fn inside the sandbox's network namespace;
	// the listeners are opened there.
	InNetns func(fn func() error) error
	// PreferProxyPort and PreferDNSPort are tried first (a restarted
	// daemon keeps the redirect targets the kernel already has).
	PreferProxyPort, PreferDNSPort uint16
	// Labels go on every audit event of the sandbox and in its credential
	// callback requests (CheckLabels).
	Labels map[string]string
	// Fence registers the cgroup as a fence (see fence.go).
	Fence bool
}

// Sandbox is one running sandbox: kernel registration, listeners, resolver
// and proxy. Stop or Detach must be called.
type Sandbox struct {
	rt       *Runtime
	Name     string
	ID       uint64
	Cgroup   string
	CA       *tlsca.CA
	kernel   *enforcer.Sandbox
	ls       *listeners
	shared   bool          // on the runtime's shared listeners (shared.go)
	fence    bool          // registered as a fence (Spec.Fence)
	released atomic.Bool   // Stop released the shared listeners
	proxy    *proxy.Server // set by serve
	dns      *dnsproxy.Sandbox
	bindings *dnsproxy.Bindings
	policy   atomic.Pointer[policy.Policy]
	labels   labelSet
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	started  time.Time
}

// Policy returns the sandbox's current policy.
func (s *Sandbox) Policy() *policy.Policy { return s.policy.Load() }

// ProxyPort and DNSPort are the sandbox's listener ports.
func (s *Sandbox) ProxyPort() uint16 { return s.ls.proxyPort }

// DNSPort is the sandbox's resolver port.
func (s *Sandbox) DNSPort() uint16 { return s.ls.dnsPort }

// Start opens the sandbox's listeners, registers its cgroup in the kernel,
// and serves its resolver and proxy until Stop.
func (rt *Runtime) Start(ctx context.Context, spec Spec) (_ *Sandbox, err error) {
	if spec.Policy == nil || spec.CA == nil {
		return nil, errors.New("starting sandbox: policy and CA are required")
	}
	if err := rt.checkFree(spec); err != nil {
		return nil, err
	}
	shared := spec.InNetns == nil && !spec.Fence
	var ls *listeners
	if shared {
		var port uint16
		if port, err = rt.sharedPort(spec.PreferProxyPort); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				rt.releaseShared()
			}
		}()
		defer rt.markStarting(spec.CgroupID)()
		if ls, err = openSharedDNS(port, spec.PreferDNSPort); err != nil {
			return nil, err
		}
	} else if ls, err = openSpecListeners(spec); err != nil {
		return nil, err
	}
	s := &Sandbox{
		rt: rt, Name: spec.Name, ID: spec.CgroupID, Cgroup: spec.CgroupPath, CA: spec.CA,
		ls: ls, shared: shared, fence: spec.Fence, bindings: dnsproxy.NewBindings(4096, 32), started: time.Now(),
	}
	s.policy.Store(spec.Policy)
	s.labels.set(spec.Labels)
	if l, ok := rt.Callbacks.(labeler); ok {
		l.SetLabels(spec.Name, spec.Labels)
	}
	emit := labeledEmitter{rt.Audit, &s.labels}
	if err = rt.register(s, spec); err != nil {
		ls.Close()
		return nil, err
	}
	if err = rt.serve(ctx, s, emit); err != nil {
		s.kernel.Detach()
		ls.Close()
		return nil, err
	}

	emit.Emit(audit.Event{Kind: audit.KindSandbox, Sandbox: s.Name, CgroupID: s.ID, Decision: "attach"})
	return s, nil
}

// markStarting makes the shared accept loop wait for the sandbox id (see
// dispatch) until the returned func is called.
func (rt *Runtime) markStarting(id uint64) func() {
	ch := make(chan struct{})
	rt.mu.Lock()
	if rt.starting == nil {
		rt.starting = map[uint64]chan struct{}{}
	}
	rt.starting[id] = ch
	rt.mu.Unlock()
	return func() {
		rt.mu.Lock()
		if rt.starting[id] == ch {
			delete(rt.starting, id)
		}
		rt.mu.Unlock()
		close(ch)
	}
}

// checkFree refuses a cgroup already attached as a sandbox.
func (rt *Runtime) checkFree(spec Spec) error {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.byID == nil {
		rt.byID = map[uint64]*Sandbox{}
		rt.names = map[string]*Sandbox{}
	}
	if other, ok := rt.byID[spec.CgroupID]; ok {
		return fmt.Errorf("cgroup %s is already attached as sandbox %q", spec.CgroupPath, other.Name)
	}
	return nil
}

// openSpecListeners opens the sandbox's listeners, in its network
// namespace when it has its own.
func openSpecListeners(spec Spec) (*listeners, error) {
	var ls *listeners
	open := func() error {
		var err error
		ls, err = openListeners(spec.PreferProxyPort, spec.PreferDNSPort)
		return err
	}
	var err error
	if spec.InNetns != nil {
		err = spec.InNetns(open)
	} else {
		err = open()
	}
	return ls, err
}

// register registers the sandbox's cgroup in the kernel with its policy's
// static and listen entries; on failure nothing stays registered.
func (rt *Runtime) register(s *Sandbox, spec Spec) error {
	kcfg := kernelConfig(s, spec.Policy)
	kernel, err := rt.Enforcer.Attach(spec.CgroupPath, spec.CgroupID, kcfg)
	if err != nil {
		return err
	}
	if err := kernel.SetStatic(staticEntries(spec.Policy)); err != nil {
		kernel.Detach()
		return err
	}
	if err := kernel.SetListen(listenEntries(spec.Policy)); err != nil {
		kernel.Detach()
		return err
	}
	s.kernel = kernel
	return nil
}

// serve serves the sandbox's resolver and proxy on its listeners (or, for
// a shared sandbox, makes them ready for the shared ones) until Stop (not
// until ctx is done: a sandbox outlives the request that started it).
func (rt *Runtime) serve(ctx context.Context, s *Sandbox, emit audit.Emitter) error {
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	fences := rt.newFence(s, emit) // fence.go
	origins := newDNSOrigins(s.kernel)
	dsb := &dnsproxy.Sandbox{
		Name: s.Name, ID: s.ID, Policy: s.Policy,
		Allow: s.kernel, Bindings: s.bindings, Audit: emit, Origins: origins, Fence: fences,
	}
	psb := &proxy.Sandbox{
		Name: s.Name, ID: s.ID, Policy: s.Policy,
		Orig: origAdapter{s.kernel}, Names: s.bindings, CA: s.CA,
		Secrets: rt.Secrets, Callbacks: auditedCallbacks{rt.Callbacks, emit}, Audit: emit,
		Tokens: rt.Tokens, Signer: rt.Signer, Fence: fences,
		// TCP DNS reaches the proxy, whose lookup consumed the kernel's
		// record: the resolver reads the origin it found.
		DNS: func(ctx context.Context, c net.Conn) {
			if o, ok := proxy.OriginFromContext(ctx); ok {
				defer origins.holdTCP(c.RemoteAddr(), o)()
			}
			rt.Resolver.ServeConn(ctx, dsb, c)
		},
	}
	srv, err := rt.Proxy.NewServer(sctx, psb)
	if err != nil {
		cancel()
		return err
	}
	s.proxy, s.dns = srv, dsb
	run := func(name string, fn func() error) {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := fn(); err != nil && sctx.Err() == nil {
				rt.Log.Error("sandbox server stopped", "sandbox", s.Name, "server", name, "err", err)
			}
		}()
	}
	ls := s.ls
	run("dns4", func() error { return rt.Resolver.Serve(sctx, dsb, ls.dnsUDP4, nil) })
	if ls.dnsUDP6 != nil {
		run("dns6", func() error { return rt.Resolver.Serve(sctx, dsb, ls.dnsUDP6, nil) })
	}
	for name, ln := range map[string]net.Listener{"proxy4": ls.proxy4, "proxy6": ls.proxy6} {
		if ln != nil {
			run(name, func() error { return srv.Serve(ln) })
		}
	}
	rt.mu.Lock()
	rt.byID[s.ID] = s
	rt.names[s.Name] = s
	rt.mu.Unlock()
	return nil
}

// SetPolicy replaces the sandbox's policy live: new connections and requests
// see it at once, established connections keep running.
func (s *Sandbox) SetPolicy(p *policy.Policy) error {
	if err := s.kernel.SetConfig(kernelConfig(s, p)); err != nil {
		return err
	}
	if err := s.kernel.SetStatic(staticEntries(p)); err != nil {
		return err
	}
	if err := s.kernel.SetListen(listenEntries(p)); err != nil {
		return err
	}
	s.policy.Store(p)
	return nil
}

// Labels returns the sandbox's labels (nil without); do not modify.
func (s *Sandbox) Labels() map[string]string { return s.labels.get() }

// SetLabels replaces the sandbox's labels live (events and callback
// requests from now on carry them).
func (s *Sandbox) SetLabels(labels map[string]string) {
	s.labels.set(labels)
	if l, ok := s.rt.Callbacks.(labeler); ok {
		l.SetLabels(s.Name, labels)
	}
}

// Stop closes the listeners and stops serving, leaving the kernel side in
// place (pinned): connections from the sandbox then fail, closed.
func (s *Sandbox) Stop() {
	s.cancel()
	s.ls.Close()
	s.proxy.Close() // what the shared accept loop hands it now is closed
	s.wg.Wait()
	s.rt.forget(s)
	if s.shared && s.released.CompareAndSwap(false, true) {
		s.rt.releaseShared()
	}
}

// Detach stops serving and removes the kernel side: links, registration,
// allowlist entries and counters.
func (s *Sandbox) Detach() error {
	s.Stop()
	err := s.kernel.Detach()
	labeledEmitter{s.rt.Audit, &s.labels}.Emit(audit.Event{Kind: audit.KindSandbox, Sandbox: s.Name, CgroupID: s.ID, Decision: "detach"})
	for _, c := range []any{s.rt.Callbacks, s.rt.Tokens} {
		if f, ok := c.(forgetter); ok {
			f.Forget(s.Name)
		}
	}
	return err
}

func (rt *Runtime) forget(s *Sandbox) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.byID[s.ID] == s {
		delete(rt.byID, s.ID)
	}
	if rt.names[s.Name] == s {
		delete(rt.names, s.Name)
	}
}

func (rt *Runtime) nameAndLabels(id uint64) (string, map[string]string) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if s, ok := rt.byID[id]; ok {
		return s.Name, s.Labels()
	}
	return "", nil
}

// KernelEvents turns the kernel's refusal events into audit events until
// ctx is done.
func (rt *Runtime) KernelEvents(ctx context.Context) error {
	return rt.Enforcer.Events(ctx, func(r enforcer.Refusal) {
		d := audit.DecisionDeny
		if r.Audit {
			d = audit.DecisionWouldDeny
		}
		v := enforcer.Render(r.Reason, r.Proto, r.Dst)
		name, labels := rt.nameAndLabels(r.Sandbox)
		rt.Audit.Emit(audit.Event{
			Time: r.Time, Kind: audit.KindKernel, Sandbox: name, Labels: labels, CgroupID: r.CgroupID,
			PID: r.PID, Comm: r.Comm, Decision: d, Reason: v.Reason, Proto: v.Proto, Dst: v.Dst(),
		})
	})
}

func kernelConfig(s *Sandbox, p *policy.Policy) enforcer.SandboxConfig {
	return enforcer.SandboxConfig{ProxyPort: s.ls.proxyPort, DNSPort: s.ls.dnsPort, Audit: p.Mode == policy.ModeAudit, Fence: s.fence, Shared: s.shared}
}

func staticEntries(p *policy.Policy) []enforcer.Static {
	var out []enforcer.Static
	for _, c := range p.StaticCIDRs() {
		out = append(out, enforcer.Static{Prefix: c.Prefix, Ports: c.Ports, Direct: c.Direct, Deny: c.Deny, UDP: c.Direct})
	}
	return out
}

func listenEntries(p *policy.Policy) []enforcer.Listen {
	var out []enforcer.Listen
	for _, l := range p.ListenEntries() {
		out = append(out, enforcer.Listen{Prefix: l.From, Ports: l.Ports})
	}
	return out
}

// origAdapter gives the proxy the enforcer's original-destination lookup.
type origAdapter struct{ s *enforcer.Sandbox }

func (a origAdapter) OriginalDst(client netip.AddrPort) (proxy.Origin, error) {
	o, err := a.s.OriginalDst(client)
	if err != nil {
		return proxy.Origin{}, err
	}
	return proxy.Origin{Dst: o.Dst, PID: o.PID, Comm: o.Comm, CgroupID: o.CgroupID}, nil
}

// dnsOrigins gives the resolver the kernel's record of which process sent a
// query. UDP answers are cached per client port for a moment: a resolver
// library sends its A and AAAA queries from one socket, and a map lookup
// per query (a bpf syscall) was a sixth of the resolver's CPU time.
type dnsOrigins struct {
	s     *enforcer.Sandbox
	cache *originCache
	tcp   sync.Map // client netip.AddrPort → proxy.Origin, while its DNS connection is served
}

// holdTCP makes o the origin of the DNS-over-TCP connection from client
// until the returned func is called.
func (d *dnsOrigins) holdTCP(client net.Addr, o proxy.Origin) func() {
	ap, err := netip.ParseAddrPort(client.String())
	if err != nil {
		return func() {}
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	d.tcp.Store(ap, o)
	return func() { d.tcp.Delete(ap) }
}

func newDNSOrigins(s *enforcer.Sandbox) *dnsOrigins {
	return &dnsOrigins{s: s, cache: newOriginCache(1024, time.Second)}
}

func (d *dnsOrigins) QueryOrigin(client netip.AddrPort, tcp bool) (uint32, string, bool) {
	if tcp {
		v, ok := d.tcp.Load(netip.AddrPortFrom(client.Addr().Unmap(), client.Port()))
		if !ok {
			return 0, "", false
		}
		o := v.(proxy.Origin)
		return o.PID, o.Comm, true
	}
	if o, ok := d.cache.Get(client.Port()); ok {
		return o.PID, o.Comm, true
	}
	o, ok := d.s.DNSOrigin(client.Port())
	if ok {
		d.cache.Add(client.Port(), o)
	}
	return o.PID, o.Comm, ok
}

// newResolverAndProxy builds the resolver and the proxy every sandbox of a
// process shares. No upstreams means those of /etc/resolv.conf.
func newResolverAndProxy(upstreams []string, allowLoopback bool, upstreamCAs []string, log *slog.Logger) (*dnsproxy.Resolver, *proxy.Proxy, error) {
	if len(upstreams) == 0 {
		var err error
		if upstreams, err = dnsproxy.UpstreamsFromResolvConf("/etc/resolv.conf"); err != nil {
			return nil, nil, fmt.Errorf("no upstream DNS configured (--dns-upstream or dns_upstreams) and /etc/resolv.conf is unusable: %w", err)
		}
	}
	resolver, err := dnsproxy.New(dnsproxy.Config{Upstreams: upstreams, AllowLoopback: allowLoopback}, log.With("component", "dns"))
	if err != nil {
		return nil, nil, err
	}
	roots, err := proxy.RootPool(upstreamCAs...)
	if err != nil {
		return nil, nil, err
	}
	plog := log.With("component", "proxy")
	return resolver, proxy.New(proxy.Config{RootCAs: roots, KernelSplice: kernelSplicer(plog), SandboxClassicalKEX: sandboxClassicalKEX()}, plog), nil
}
