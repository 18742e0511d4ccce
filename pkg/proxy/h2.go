package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"sync"

	"github.com/sluice-dev/sluice/pkg/audit"
)

// The HTTP/2 front end: a TLS connection that negotiated h2 (tls.go) is
// handed to the sandbox's http.Server through chanListener; ServeHTTP runs
// each request through the gate (gate.go) and forwards it with
// httputil.ReverseProxy: rewrite sets the upstream target and credentials,
// protoRouter (upstream.go) picks the pool, modifyResponse filters the
// answer (filter.go), and upstreamError answers a failed exchange.

// connKey carries a connection's *connInfo in its requests' contexts;
// reqKey carries a request's *reqState to rewrite, the transport's dialer,
// modifyResponse and upstreamError.
type connKey struct{}
type reqKey struct{}

// startHTTP makes the sandbox-facing TLS configuration (tls.go) and starts
// the http.Server that serves HTTP/2 clients from chanListener.
func (s *server) startHTTP() {
	s.tlsConfig = s.newTLSConfig()
	s.httpLn = &chanListener{ch: make(chan net.Conn), done: make(chan struct{})}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetHTTP2(true)
	s.httpSrv = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: s.p.cfg.ReadHeaderTimeout,
		IdleTimeout:       s.p.cfg.IdleTimeout,
		MaxHeaderBytes:    1 << 20,
		Protocols:         &protos,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: s.p.cfg.MaxConcurrentStreams,
		},
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if tc, ok := c.(*tls.Conn); ok {
				c = tc.NetConn()
			}
			if cc, ok := c.(*clientConn); ok {
				return context.WithValue(ctx, connKey{}, cc.ci)
			}
			return ctx
		},
	}
	s.httpWG.Add(1)
	go func() {
		defer s.httpWG.Done()
		s.httpSrv.Serve(s.httpLn)
	}()
}

// newReverseProxy is the forwarder of the HTTP/2 front end.
func (p *Proxy) newReverseProxy() *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite:   rewrite,
		Transport: protoRouter{p},
		// Bodies of unknown length (chunked, SSE) are flushed after every
		// write (ReverseProxy treats ContentLength -1 and text/event-stream
		// as FlushInterval -1); known-length bodies go through the server's
		// buffer, which is flushed when full and at the end.
		FlushInterval:  0,
		BufferPool:     bufPool{},
		ModifyResponse: p.modifyResponse,
		ErrorHandler:   p.upstreamError,
		ErrorLog:       slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
	}
}

// ServeHTTP handles one intercepted request of an HTTP/2 client (HTTP/1.x
// clients are served by serveH1).
func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ci, _ := r.Context().Value(connKey{}).(*connInfo)
	if ci == nil {
		http.Error(w, "sluice: no connection state", http.StatusInternalServerError)
		return
	}
	rs := &reqState{}
	rs.begin(ci, r)
	defer s.finish(rs)
	if code, body := s.checkRequest(r.Context(), r, rs); code != 0 {
		rs.status = code
		writeText(w, code, body)
		return
	}
	if code, body := s.shapeRequest(r, rs); code != 0 {
		writeText(w, code, body)
		return
	}
	s.p.rp.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), reqKey{}, rs)))
	if rs.errMsg != "" {
		rs.decision = audit.DecisionError
		rs.ev.Reason = rs.errMsg
	}
}

func writeText(w http.ResponseWriter, code int, body string) {
	h := w.Header()
	for k := range h {
		delete(h, k)
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Sluice", "refused")
	w.WriteHeader(code)
	io.WriteString(w, body)
}

var forwardedHeaders = []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded"}

// rewrite prepares the upstream request: target, Host, injected headers.
// ReverseProxy has already removed hop-by-hop headers (RFC 9110 7.6.1,
// including those named in Connection) from pr.Out.
func rewrite(pr *httputil.ProxyRequest) {
	rs := pr.In.Context().Value(reqKey{}).(*reqState)
	pr.Out.URL.Scheme = rs.scheme
	pr.Out.URL.Host = rs.upHostPort
	pr.Out.Host = rs.outHost
	// Transparent: keep the client's X-Forwarded-* as they were.
	for _, h := range forwardedHeaders {
		if v, ok := pr.In.Header[h]; ok {
			pr.Out.Header[h] = v
		}
	}
	for _, h := range rs.inject {
		pr.Out.Header.Del(h.name)
		pr.Out.Header.Set(h.name, h.value)
	}
	rs.upstreamRequest(pr.Out.Header)
}

func (p *Proxy) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	rs := r.Context().Value(reqKey{}).(*reqState)
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		rs.status = 499 // the client went away
		rs.errMsg = "client closed the request"
		return
	}
	if code, body, ok := rs.ci.s.shapeFailed(r, rs, err); ok {
		writeText(w, code, body)
		return
	}
	writeText(w, http.StatusBadGateway, "sluice: "+rs.upstreamFailed(err)+"\n")
}

// chanListener hands intercepted connections to the sandbox's http.Server.
type chanListener struct {
	ch     chan net.Conn
	done   chan struct{}
	once   sync.Once
	closed bool
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// bufPool is the ReverseProxy copy buffer pool (32 KiB buffers).
type bufPool struct{}

func (bufPool) Get() []byte { return copyBufs.Get().(*[32 << 10]byte)[:] }

func (bufPool) Put(b []byte) {
	if cap(b) == 32<<10 {
		copyBufs.Put((*[32 << 10]byte)(b[:32<<10]))
	}
}
