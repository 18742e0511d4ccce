package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sync/singleflight"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/fence"
	"github.com/sluice-dev/sluice/pkg/policy"
)

// Origins tells which process sent a query from client, as the kernel
// recorded it; the sandbox cannot forge it.
type Origins interface {
	QueryOrigin(client netip.AddrPort, tcp bool) (pid uint32, comm string, ok bool)
}

// Allowlister is one sandbox's kernel allowlist: after Allow returns nil,
// the sandbox may connect to addr until the given time. direct means the
// connection bypasses the proxy. addr is never an IPv4-mapped IPv6
// address. Allow is called again for an address already allowed, with a
// later (or, for a shorter-lived answer, earlier) time: the entry should
// keep the later of the two. Connections already established must not be
// cut when an entry expires.
type Allowlister interface {
	Allow(addr netip.Addr, until time.Time, direct bool) error
}

// Revoker is optionally implemented by an Allowlister. When a sandbox's
// Bindings evict an address that no name is bound to any more, the resolver
// calls Revoke so the allowlist stays bounded by the per-name cap. Without
// it, evicted addresses stay allowed until their expiry.
type Revoker interface {
	Revoke(addr netip.Addr) error
}

// Sandbox is the resolver's view of one sandbox.
type Sandbox struct {
	// Name and ID (the cgroup id) label audit events.
	Name string
	ID   uint64
	// Policy returns the sandbox's current policy; it is called for every
	// query, so replacing the policy takes effect at the next query. A nil
	// policy refuses every name. Required.
	Policy func() *policy.Policy
	// Allow is the sandbox's kernel allowlist. Required.
	Allow Allowlister
	// Bindings records address to name pairings for the proxy. If nil,
	// Handler creates one from the Resolver's Config and stores it here.
	Bindings *Bindings
	// Audit receives one event per query. Nil discards.
	Audit audit.Emitter
	// Origins attributes queries to the process that sent them (pid and
	// command, recorded by the kernel). Nil leaves them unattributed.
	Origins Origins
	// Fence holds the sandbox's dns_qps fence: a query past it is answered
	// REFUSED, with an Extended DNS Error naming the limit when the client
	// speaks EDNS0 (UDP and TCP alike). Nil: none.
	Fence *fence.Sandbox

	// mu guards the building of h and the defaults it fills in above
	// (Bindings, Audit).
	mu sync.Mutex
	// h is the handler the Resolver h.r built for this sandbox; later
	// calls reuse it (see Resolver.Handler).
	h atomic.Pointer[handler]
}

// Resolver resolves, filters and caches on behalf of sandboxes. Create it
// with New; it holds no goroutines or sockets of its own.
type Resolver struct {
	cfg   Config
	log   *slog.Logger
	fwd   *forwarder
	cache *cache
	sf    singleflight.Group
	now   func() time.Time
	// lastWarn is when an upstream failure was last logged (unix nanos).
	lastWarn atomic.Int64
	// unclaimed counts the queries ServeShared dropped: no sandbox.
	unclaimed atomic.Uint64
}

// logLimit reports whether a repeated warning may be logged at now: at
// most one every 10 seconds, so a dead upstream does not flood the log
// (every failure still has its audit event).
func (r *Resolver) logLimit(now time.Time) bool {
	last := r.lastWarn.Load()
	if now.UnixNano()-last < int64(10*time.Second) {
		return false
	}
	return r.lastWarn.CompareAndSwap(last, now.UnixNano())
}

// New returns a Resolver for cfg. cfg.Upstreams must be non-empty host:port
// addresses; log must not be nil.
func New(cfg Config, log *slog.Logger) (*Resolver, error) {
	if log == nil {
		return nil, errors.New("dnsproxy: nil logger")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("dnsproxy config: %w", err)
	}
	return &Resolver{
		cfg:   cfg,
		log:   log,
		fwd:   newForwarder(cfg),
		cache: newCache(cfg.CacheSize),
		now:   time.Now,
	}, nil
}

// Handler returns the dns.Handler that answers queries for sb. sb.Policy
// and sb.Allow must be set; a nil sb.Bindings is created and stored, and a
// nil sb.Audit set to audit.Discard, once. The handler is kept in sb and
// returned again by later calls with the same Resolver, so Handler, Serve,
// ServeConn and ServeShared may be called concurrently for one sb (they all
// answer through this handler, and share its UDP templates). Set sb's
// fields before the first call and do not change them afterwards.
func (r *Resolver) Handler(sb *Sandbox) (dns.Handler, error) {
	h, err := r.handlerFor(sb)
	if err != nil {
		return nil, err
	}
	return h, nil
}

// handlerFor returns sb's handler, building it (and sb's defaults) on the
// first call. A sandbox used with another Resolver gets a new handler.
func (r *Resolver) handlerFor(sb *Sandbox) (*handler, error) {
	if sb == nil {
		return nil, errors.New("dnsproxy: sandbox needs Policy and Allow")
	}
	if h := sb.h.Load(); h != nil && h.r == r {
		return h, nil
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if h := sb.h.Load(); h != nil && h.r == r {
		return h, nil
	}
	if sb.Policy == nil || sb.Allow == nil {
		return nil, errors.New("dnsproxy: sandbox needs Policy and Allow")
	}
	if sb.Bindings == nil {
		sb.Bindings = NewBindings(r.cfg.BindingsSize, r.cfg.PerNameCap)
	}
	if sb.Audit == nil {
		sb.Audit = audit.Discard{}
	}
	h := &handler{r: r, sb: sb, sharedSlow: make(chan struct{}, maxSlowUDP)}
	sb.h.Store(h)
	return h, nil
}

// Serve answers sb's queries arriving on pc (UDP) and ln (TCP), either of
// which may be nil, until ctx is done or a listener fails. pc should be
// bound to one address (replies leave from it). Repeated UDP queries are
// answered in batches from per-sandbox wire templates without unpacking
// (see batch.go and fastpath.go); everything else goes through the Handler. It closes pc and
// ln and waits for the queries in flight before returning. It returns nil
// when ctx ended it or the listeners were closed.
func (r *Resolver) Serve(ctx context.Context, sb *Sandbox, pc net.PacketConn, ln net.Listener) error {
	h, err := r.handlerFor(sb)
	if err != nil {
		return err
	}
	if pc == nil && ln == nil {
		return errors.New("dnsproxy: nothing to serve")
	}
	// UDP is served on this goroutine, TCP on one more; the end of either,
	// or of ctx, ends both. (A goroutine per family less than a watcher
	// per listener: 10,000 idle sandboxes hold 20,000 fewer stacks, #21.)
	var udpErr, tcpErr error
	ended := make(chan struct{})
	var endOnce sync.Once
	end := func() {
		endOnce.Do(func() {
			close(ended)
			if pc != nil {
				pc.Close()
			}
		})
	}
	stop := context.AfterFunc(ctx, end)
	defer stop()
	var srv *dns.Server
	var tcpStarted, tcpDone chan struct{}
	if ln != nil {
		tcpStarted, tcpDone = make(chan struct{}), make(chan struct{})
		var once sync.Once
		srv = &dns.Server{Listener: ln, Handler: h,
			// The handler judges every message itself, so that each one
			// gets its audit event (UDP does the same).
			MsgAcceptFunc:     func(dns.Header) dns.MsgAcceptAction { return dns.MsgAccept },
			ReadTimeout:       r.cfg.TCPReadTimeout,
			IdleTimeout:       func() time.Duration { return r.cfg.TCPIdleTimeout },
			NotifyStartedFunc: func() { once.Do(func() { close(tcpStarted) }) }}
		go func() {
			defer close(tcpDone)
			tcpErr = srv.ActivateAndServe()
			end()
		}()
	}
	if pc != nil {
		udpErr = h.serveUDP(pc)
		end()
	}
	<-ended
	if srv != nil {
		select {
		case <-tcpStarted:
		case <-tcpDone:
		}
		select {
		case <-tcpDone:
		default:
			// Shutdown closes the listener and waits for handlers.
			sctx, cancel := context.WithTimeout(context.Background(), r.cfg.Timeout+time.Second)
			if err := srv.ShutdownContext(sctx); err != nil {
				r.log.Debug("dns server shutdown", "sandbox", sb.Name, "err", err)
			}
			cancel()
		}
		<-tcpDone
		ln.Close()
	}
	var errs []error
	for _, err := range []error{udpErr, tcpErr} {
		if err != nil && !errors.Is(err, net.ErrClosed) && ctx.Err() == nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("serving dns for sandbox %s: %w", sb.Name, err)
	}
	return nil
}

// lookup returns the upstream answer for (name, qtype), from the cache or
// from the upstreams, coalescing concurrent misses.
func (r *Resolver) lookup(name string, qtype uint16, now time.Time) (*entry, error) {
	k := cacheKey{name: name, qtype: qtype}
	if e, ok := r.cache.get(k, now); ok {
		return e, nil
	}
	v, err, _ := r.sf.Do(strconv.Itoa(int(qtype))+" "+name, func() (any, error) {
		if e, ok := r.cache.get(k, r.now()); ok {
			return e, nil
		}
		m, err := r.fwd.exchange(context.Background(), name, qtype)
		if err != nil {
			return nil, err
		}
		e := newEntry(m, r.now())
		r.cache.put(k, e)
		return e, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*entry), nil
}
