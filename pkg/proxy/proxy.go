package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/fence"
	"github.com/sluice-dev/sluice/pkg/policy"
	"github.com/sluice-dev/sluice/pkg/tlsca"
)

// Origin is what the kernel recorded about a redirected connection.
type Origin struct {
	Dst      netip.AddrPort // the address the sandbox connected to
	PID      uint32
	Comm     string
	CgroupID uint64
}

// OriginalDst recovers the original destination of an accepted connection
// from its client (remote) address. The enforcer implements it.
type OriginalDst interface {
	OriginalDst(client netip.AddrPort) (Origin, error)
}

// NameLookup returns the unexpired names this sandbox resolved (through
// sluice's resolver) to addr: the names the sandbox asked for, also when the
// resolver remapped them to a mirror. Order is only a tie-break (the first
// allowed name decides a connection without SNI/Host when none needs HTTP).
type NameLookup interface {
	Names(addr netip.Addr) []string
}

// Secrets resolves a named secret for a sandbox at request time.
type Secrets interface {
	Lookup(ctx context.Context, sandbox, name string) (string, error)
}

// Callbacks asks a rule's credential callback for the headers to inject.
type Callbacks interface {
	CallbackHeaders(ctx context.Context, sandbox, host string, port uint16, cb *policy.Callback) (map[string]string, error)
}

// Sandbox is the view of one sandbox that one Server serves.
type Sandbox struct {
	Name string
	ID   uint64
	// Policy returns the current policy; it is called per connection and per
	// request so that a reload takes effect without restarting. nil denies.
	Policy    func() *policy.Policy
	Orig      OriginalDst
	Names     NameLookup // nil: no bindings (only CIDR rules admit unbound addresses)
	CA        *tlsca.CA
	Secrets   Secrets   // nil: any secret header fails the request (502)
	Callbacks Callbacks // nil: any callback rule fails the request (502)
	Audit     audit.Emitter
	Fence     *fence.Sandbox // the sandbox's resource fences; nil: none

	// Tokens and Signer serve oauth2 and aws_sigv4 rules (authn.go); nil
	// fails such a rule's requests (502).
	Tokens Tokens
	Signer RequestSigner

	// DNS serves DNS over TCP on c: the kernel redirects a sandbox's TCP
	// connections to port 53 to the proxy, which hands each one here once
	// its original destination is known, before reading from it. It owns
	// c until it returns; then the proxy closes c. ctx ends when the
	// server closes (which also closes c) and carries the connection's
	// Origin (OriginFromContext): the kernel's record was consumed by the
	// lookup. The connection holds its connections-fence slot until DNS
	// returns. Nil: such connections are closed (and logged as denied).
	DNS func(ctx context.Context, c net.Conn)
}

// Config holds what all sandboxes served by one Proxy share. Zero values
// take the defaults documented per field.
type Config struct {
	// RootCAs verifies upstream certificates. nil: the system roots (see
	// RootPool to add extra roots for internal services).
	RootCAs *x509.CertPool
	// Resolve resolves a remap target (the upstream of a remapped rule).
	// nil: the original destination address is dialled (the sandbox's
	// resolver already answered the mirror's addresses) on the remap port.
	Resolve func(ctx context.Context, host string) ([]netip.Addr, error)
	// Dial opens upstream TCP connections. nil: a net.Dialer with DialTimeout.
	// It should return *net.TCPConn for zero-copy splicing.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)

	DialTimeout       time.Duration // default 10s
	PeekTimeout       time.Duration // whole ClientHello / request head; default 10s
	FirstByteTimeout  time.Duration // server-speaks-first protocols; default 500ms
	HandshakeTimeout  time.Duration // TLS with the sandbox client; default 10s
	ReadHeaderTimeout time.Duration // intercepted request heads; default 30s
	IdleTimeout       time.Duration // intercepted keep-alive; default 120s
	// ResponseHeaderTimeout bounds the wait for upstream response headers.
	// Default 0: no limit (slow LLM APIs).
	ResponseHeaderTimeout time.Duration
	// MaxIdleConnsPerHost of the pooled upstream transport; default 64.
	MaxIdleConnsPerHost int
	// MaxConcurrentStreams per HTTP/2 client connection; default 250.
	MaxConcurrentStreams int
	// Exe resolves the executable of a connecting process from its pid
	// (for processes: rules and the events). nil: /proc/PID/exe through a
	// pidfd (process.go).
	Exe func(pid uint32) (string, error)
	// KernelSplice moves spliced connections' bytes in the kernel (issue
	// #21). nil: the user-space splice.
	KernelSplice KernelSplicer
	// SandboxClassicalKEX limits the sandbox-facing TLS server to the
	// classical key exchanges (X25519, then the NIST curves), without the
	// hybrid post-quantum ones (X25519MLKEM768, ...) that crypto/tls
	// chooses whenever the client supports them (Go's and curl's clients
	// do). Default false: crypto/tls's defaults. The hybrid exchange is
	// about a fifth of sluice's CPU per new intercepted connection
	// (PERF.md). The sandbox-facing connection does not leave the host, so
	// a recorded exchange is available only to someone who can already
	// read the host's memory (and the sandbox CA's key). Upstream
	// connections keep crypto/tls's defaults either way.
	SandboxClassicalKEX bool
}

// RootPool returns the system roots plus the certificates in the given PEM
// files (for upstreams signed by an internal CA).
func RootPool(extraPEMFiles ...string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	for _, f := range extraPEMFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("reading extra roots: %w", err)
		}
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("reading extra roots: %s holds no PEM certificate", f)
		}
	}
	return pool, nil
}

// Proxy is the transparent proxy shared by all sandboxes: upstream roots,
// dialer and the pooled upstream transport. Each sandbox is served by its
// Server (NewServer), fed by its own listeners (Serve) or by a caller that
// accepts on a shared one (ServeConn). A Proxy is safe for concurrent use.
type Proxy struct {
	cfg Config
	log *slog.Logger
	h2  *http.Transport // upstream pool of HTTP/2 clients: HTTP/2 where offered
	// firstConn: upstream authorities (scheme://host:port) whose first
	// request on the HTTP/2 path dialed or is dialing (roundTrip).
	firstConn sync.Map
	// sessions resumes upstream TLS sessions (keyed by server name) across
	// the pools, notably the per-connection pools of CIDR-admitted
	// connections. A resumed session carries the chain verified in its full
	// handshake; crypto/tls checks it again for the server name and expiry.
	sessions tls.ClientSessionCache
	// idle keeps the upstream connections of HTTP/1.x clients (serveH1)
	// between client connections; upTLS caches their TLS configurations.
	idle       idlePool
	upTLS      sync.Map // server name -> *tls.Config
	upTLSCount atomic.Int64
}

// New creates a Proxy. log must not be nil.
func New(cfg Config, log *slog.Logger) *Proxy {
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.PeekTimeout == 0 {
		cfg.PeekTimeout = 10 * time.Second
	}
	if cfg.FirstByteTimeout == 0 {
		cfg.FirstByteTimeout = 500 * time.Millisecond
	}
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.ReadHeaderTimeout == 0 {
		cfg.ReadHeaderTimeout = 30 * time.Second
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 120 * time.Second
	}
	if cfg.MaxIdleConnsPerHost == 0 {
		cfg.MaxIdleConnsPerHost = 64
	}
	if cfg.MaxConcurrentStreams == 0 {
		cfg.MaxConcurrentStreams = 250
	}
	if cfg.RootCAs == nil {
		cfg.RootCAs, _ = RootPool()
	}
	if cfg.Dial == nil {
		d := &net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}
		cfg.Dial = d.DialContext
	}
	p := &Proxy{cfg: cfg, log: log, sessions: tls.NewLRUClientSessionCache(1024)}
	p.h2 = p.newTransport(true, cfg.MaxIdleConnsPerHost)
	return p
}

// Close drops the idle upstream connections.
func (p *Proxy) Close() {
	p.idle.closeAll()
	p.h2.CloseIdleConnections()
}

// Serve accepts the sandbox's redirected connections on ln until ctx is
// done (then it closes ln and every open connection and returns nil) or ln
// fails permanently. sb must have Policy, Orig and CA set; it is copied, so
// the same Sandbox may be served on several listeners (127.0.0.1 and ::1).
// It is NewServer, Server.Serve and Server.Close: it returns after every
// connection it accepted is closed.
func (p *Proxy) Serve(ctx context.Context, sb *Sandbox, ln net.Listener) error {
	s, err := p.NewServer(ctx, sb)
	if err != nil {
		return err
	}
	defer s.Close()
	return s.Serve(ln)
}

// Server serves the redirected connections of one sandbox, from any number
// of listeners (Serve) and from a caller that accepts them itself
// (ServeConn), such as a listener shared by all sandboxes. An idle Server
// holds no goroutine. Close must be called (or the context of NewServer
// end) to release its connections. A Server is safe for concurrent use.
type Server struct {
	s      *server
	ctx    context.Context // done when the server closes; the handlers' context
	cancel context.CancelFunc
	stop   func() bool // deregisters the closing of connections at ctx's end
}

// NewServer returns the server of one sandbox; it starts no goroutine. ctx
// ends it like Close (without waiting for the handlers: Close still waits).
// sb must have Policy, Orig and CA set; it is copied.
func (p *Proxy) NewServer(ctx context.Context, sb *Sandbox) (*Server, error) {
	if sb == nil || sb.Policy == nil || sb.Orig == nil || sb.CA == nil {
		return nil, errors.New("serving sandbox: Policy, Orig and CA are required")
	}
	sbc := *sb
	if sbc.Audit == nil {
		sbc.Audit = audit.Discard{}
	}
	s := &server{
		p:     p,
		sb:    &sbc,
		log:   p.log.With("sandbox", sb.Name),
		conns: make(map[net.Conn]struct{}),
	}
	s.tlsConfig = s.newTLSConfig()
	srv := &Server{s: s}
	srv.ctx, srv.cancel = context.WithCancel(ctx)
	// A callback, not a goroutine, closes the connections when ctx ends.
	srv.stop = context.AfterFunc(srv.ctx, s.closeAll)
	return srv, nil
}

// ServeConn serves c, a connection redirected from the sandbox, on a new
// goroutine. orig is its original destination when the caller already
// looked it up (the kernel's record is deleted by the lookup, so it cannot
// be asked twice); nil: the server asks the sandbox's Orig. The connection
// is subject to the sandbox's connections fence, as an accepted one. After
// Close (or the end of NewServer's context) c is closed at once.
func (s *Server) ServeConn(c net.Conn, orig *Origin) {
	sv := s.s
	if s.ctx.Err() != nil {
		c.Close()
		return
	}
	if !sv.sb.Fence.Acquire(fence.Connections) {
		if sv.isClosed() {
			c.Close()
			return
		}
		sv.refuseAtConnFence(c, orig)
		return
	}
	if !sv.admit(c) {
		sv.sb.Fence.Release(fence.Connections)
		c.Close()
		return
	}
	go func() {
		defer sv.wg.Done()
		defer sv.sb.Fence.Release(fence.Connections)
		sv.handle(s.ctx, c, orig)
	}()
}

// Serve accepts on ln and serves each connection (ServeConn, with the
// original destination asked of the sandbox's Orig) until ln fails or the
// server closes; then it returns nil, else the error of ln. ln is closed
// when Serve returns, and when the server closes (no goroutine waits for
// that). Serve may be called for several listeners at once.
func (s *Server) Serve(ln net.Listener) error {
	// Closing ln ends Accept; no goroutine waits for it (issue #21).
	stop := context.AfterFunc(s.ctx, func() { ln.Close() })
	defer func() {
		if stop() {
			ln.Close()
		}
	}()
	err := AcceptLoop(ln, s.s.log, func(c net.Conn) { s.ServeConn(c, nil) })
	if s.ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("serving sandbox %s: %w", s.s.sb.Name, err)
}

// AcceptLoop accepts on ln and hands each connection to serve, on the
// accepting goroutine, until Accept fails in a way a retry cannot cure;
// it returns that error (net.ErrClosed once ln is closed). A timeout or
// running out of descriptors (EMFILE, ENFILE) is logged on log and
// retried after a pause that doubles from 5 ms up to 1 s.
func AcceptLoop(ln net.Listener, log *slog.Logger, serve func(net.Conn)) error {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				log.Warn("accept failed; retrying", "listener", ln.Addr(), "err", err, "delay", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		serve(c)
	}
}

// Close closes every open connection (and the listeners of Serve) and
// waits for their handlers. It is idempotent.
func (s *Server) Close() {
	s.stop()
	s.cancel()
	s.s.shutdown()
}

// server is the state of one Server: one sandbox, any number of listeners.
type server struct {
	p   *Proxy
	sb  *Sandbox
	log *slog.Logger

	// mu guards conns and closed (and httpSrv, httpLn); the handlers'
	// s.wg.Add happen under it (admit).
	mu     sync.Mutex
	conns  map[net.Conn]struct{} // client and upstream connections open
	closed bool
	wg     sync.WaitGroup // the client connections' handlers

	tlsConfig *tls.Config
	httpSrv   *http.Server  // started by h2Listener; guarded by mu
	httpLn    *chanListener // guarded by mu
	httpWG    sync.WaitGroup
}

func (s *server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// admit tracks c, a client connection whose handler the caller starts
// (and marks done on s.wg), unless the server is closed. The handler is
// counted under mu, so that shutdown's Wait follows every Add.
func (s *server) admit(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// closeAll closes every tracked connection and the HTTP/2 server; no
// connection is tracked after. It may run more than once, and
// concurrently.
func (s *server) closeAll() {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.stopHTTP()
}

// shutdown is closeAll, then it waits for the connections' handlers.
func (s *server) shutdown() {
	s.closeAll()
	s.wg.Wait()
}

func (s *server) emit(ev audit.Event) {
	ev.V = audit.SchemaVersion
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	ev.Sandbox = s.sb.Name
	if ev.CgroupID == 0 {
		ev.CgroupID = s.sb.ID
	}
	s.sb.Audit.Emit(ev)
}

// copyBufs holds the 32 KiB copy buffers of every path (body relays,
// splice fallbacks, the HTTP/2 front end).
var copyBufs = sync.Pool{New: func() any { return new([32 << 10]byte) }}
