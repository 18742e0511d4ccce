package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/policy"
	"github.com/sluice-dev/sluice/pkg/tlsca"
)

// upstreamCA signs the certificates of the test upstreams; the proxy gets it
// as its (only) root, the way an internal CA is configured as an extra root.
var upstreamCA = func() *tlsca.CA {
	ca, err := tlsca.New("test-upstream", 24*time.Hour)
	if err != nil {
		panic(err)
	}
	return ca
}()

func upstreamPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(upstreamCA.CertPEM())
	return p
}

// newUpstream starts a TLS server on ip:0 whose certificate is minted for
// whatever SNI the proxy sends (signed by upstreamCA).
func newUpstream(t testing.TB, ip string, h http.Handler) *httptest.Server {
	t.Helper()
	return newUpstreamWith(t, ip, h, nil)
}

// newUpstreamWith is newUpstream with configure applied to the server
// before it starts.
func newUpstreamWith(t testing.TB, ip string, h http.Handler, configure func(*http.Server)) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	if configure != nil {
		configure(srv.Config)
	}
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener.Close()
	srv.Listener = ln
	srv.EnableHTTP2 = true
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.TLS = upstreamCA.TLSConfig()
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

func newUpstreamOn(t testing.TB, ln net.Listener, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = ln
	srv.EnableHTTP2 = true
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.TLS = upstreamCA.TLSConfig()
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

func newPlainUpstream(t testing.TB, ip string, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

func addrPort(t testing.TB, s string) netip.AddrPort {
	t.Helper()
	u := strings.TrimPrefix(strings.TrimPrefix(s, "https://"), "http://")
	ap, err := netip.ParseAddrPort(u)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

// fakeOrig is the kernel's original-destination table: the test's dialer
// registers the client address before the proxy looks it up (the lookup
// waits briefly, as the registration races with Accept).
type fakeOrig struct {
	mu       sync.Mutex
	m        map[netip.AddrPort]netip.AddrPort
	cond     *sync.Cond
	fallback netip.AddrPort // for clients the test cannot register (external programs)
}

func newFakeOrig() *fakeOrig {
	f := &fakeOrig{m: make(map[netip.AddrPort]netip.AddrPort)}
	f.cond = sync.NewCond(&f.mu)
	return f
}

// setFallback answers dst for unregistered clients. Call it after the
// test's bindings: its lock orders them before the proxy's reads.
func (f *fakeOrig) setFallback(dst netip.AddrPort) {
	f.mu.Lock()
	f.fallback = dst
	f.mu.Unlock()
}

func (f *fakeOrig) set(client, dst netip.AddrPort) {
	f.mu.Lock()
	f.m[client] = dst
	f.mu.Unlock()
	f.cond.Broadcast()
}

func (f *fakeOrig) OriginalDst(client netip.AddrPort) (Origin, error) {
	deadline := time.Now().Add(2 * time.Second)
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		if d, ok := f.m[client]; ok {
			delete(f.m, client)
			return Origin{Dst: d, PID: 42, Comm: "testclient", CgroupID: 7}, nil
		}
		if f.fallback.IsValid() {
			return Origin{Dst: f.fallback, PID: 43, Comm: "external", CgroupID: 7}, nil
		}
		if time.Now().After(deadline) {
			return Origin{}, errors.New("no original destination")
		}
		go func() { time.Sleep(10 * time.Millisecond); f.cond.Broadcast() }()
		f.cond.Wait()
	}
}

type fakeNames map[netip.Addr][]string

func (f fakeNames) Names(a netip.Addr) []string { return f[a] }

type fakeSecrets map[string]string

func (f fakeSecrets) Lookup(_ context.Context, _, name string) (string, error) {
	v, ok := f[name]
	if !ok {
		return "", fmt.Errorf("secret %s not found", name)
	}
	return v, nil
}

type fakeCallbacks struct {
	hdrs map[string]string
	err  error
}

func (f fakeCallbacks) CallbackHeaders(context.Context, string, string, uint16, *policy.Callback) (map[string]string, error) {
	return f.hdrs, f.err
}

type recorder struct {
	mu sync.Mutex
	ev []audit.Event
}

func (r *recorder) Emit(e audit.Event) {
	r.mu.Lock()
	r.ev = append(r.ev, e)
	r.mu.Unlock()
}

func (r *recorder) kind(k string) []audit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []audit.Event
	for _, e := range r.ev {
		if e.Kind == k {
			out = append(out, e)
		}
	}
	return out
}

// waitKind waits until at least n events of kind k were emitted.
func (r *recorder) waitKind(t testing.TB, k string, n int) []audit.Event {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		ev := r.kind(k)
		if len(ev) >= n || time.Now().After(deadline) {
			return ev
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// env is one proxy serving one sandbox on loopback.
type env struct {
	t       testing.TB
	p       *Proxy
	sb      *Sandbox
	orig    *fakeOrig
	names   fakeNames
	rec     *recorder
	ln      net.Listener
	pol     *policy.Policy
	hosts   map[string]netip.AddrPort // name:port the client asks → real upstream
	sandbox *x509.CertPool
	// stop cancels Serve; stopped is closed when it has returned, with
	// serveErr set.
	stop     context.CancelFunc
	stopped  chan struct{}
	serveErr error
}

type envOpt func(*env, *Config)

func mustPolicy(t testing.TB, yaml string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("policy: %v", err)
	}
	return p
}

func newEnv(t testing.TB, pol string, opts ...envOpt) *env {
	t.Helper()
	ca, err := tlsca.New("sb-test", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{
		t:     t,
		orig:  newFakeOrig(),
		names: fakeNames{},
		rec:   &recorder{},
		hosts: map[string]netip.AddrPort{},
		pol:   mustPolicy(t, pol),
	}
	e.sandbox = x509.NewCertPool()
	e.sandbox.AppendCertsFromPEM(ca.CertPEM())
	// A client's first bytes (a Go client's ClientHello) can come more
	// than 100 ms after connect on a loaded machine; a test that expects
	// the proxy to see them (a refusal answered in HTTP, a name matched)
	// then saw the address decided without them. Tests of server-first
	// protocols wait this long for their banner.
	cfg := Config{RootCAs: upstreamPool(), FirstByteTimeout: time.Second}
	e.sb = &Sandbox{
		Name:    "sb-test",
		ID:      7,
		Policy:  func() *policy.Policy { return e.pol },
		Orig:    e.orig,
		Names:   e.names,
		CA:      ca,
		Secrets: fakeSecrets{"TOKEN": "s3cr3t-token-value", "OTHER": "another-secret-xyz"},
		Audit:   e.rec,
	}
	for _, o := range opts {
		o(e, &cfg)
	}
	level := slog.LevelWarn
	if os.Getenv("SLUICE_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	e.p = New(cfg, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
	e.ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.stop, e.stopped = cancel, make(chan struct{})
	go func() {
		e.serveErr = e.p.Serve(ctx, e.sb, e.ln)
		close(e.stopped)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-e.stopped:
			if e.serveErr != nil {
				t.Errorf("Serve: %v", e.serveErr)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Serve did not return")
		}
		e.p.Close()
	})
	return e
}

// bind makes name resolve (for the sandbox) to the upstream's address: the
// client dials name:port, the kernel would redirect it to the proxy with the
// upstream as original destination, and the resolver binding says name.
func (e *env) bind(name string, upstream netip.AddrPort) {
	e.hosts[joinHostPort(name, upstream.Port())] = upstream
	e.names[upstream.Addr()] = append(e.names[upstream.Addr()], name)
}

// dial connects to the proxy as if the sandbox connected to dst.
func (e *env) dial(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", e.ln.Addr().String())
	if err != nil {
		return nil, err
	}
	e.orig.set(netip.MustParseAddrPort(c.LocalAddr().String()), dst)
	return c, nil
}

// transport is the sandbox's HTTP client transport: names map to upstream
// addresses as the sandbox's resolver answered, connections go to the proxy.
func (e *env) transport(h2 bool) *http.Transport {
	return &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			dst, ok := e.hosts[addr]
			if !ok {
				ap, err := netip.ParseAddrPort(addr)
				if err != nil {
					return nil, fmt.Errorf("test: %s is not bound", addr)
				}
				dst = ap
			}
			return e.dial(ctx, dst)
		},
		TLSClientConfig:     &tls.Config{RootCAs: e.sandbox},
		ForceAttemptHTTP2:   h2,
		MaxIdleConnsPerHost: 100,
		DisableCompression:  true,
	}
}

func (e *env) client(h2 bool) *http.Client {
	tr := e.transport(h2)
	e.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func readAll(t testing.TB, r *http.Response) string {
	t.Helper()
	defer r.Body.Close()
	b, err := io.ReadAll(r.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func newTestCA() (*tlsca.CA, error) { return tlsca.New("unrelated", time.Hour) }
