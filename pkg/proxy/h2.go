package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The HTTP/2 front end: a TLS connection that negotiated h2 (tls.go) is
// handed to the sandbox's http.Server through chanListener, whose HTTP/2
// server (x/net/http2, bundled) runs one ServeHTTP per stream. Each stream
// passes the request gate (gate.go) and request shaping (shape.go) exactly
// as on the HTTP/1.x loop, has its header prepared for the upstream by the
// same step (prepareUpstream), and is forwarded by forwardH2 over the
// pooled upstream transports (upstream.go: HTTP/2 where the upstream
// negotiates it, many streams on one connection; HTTP/1.1 otherwise). The
// answer goes through the same response filter (filter.go): 1xx headers,
// final header, body (decoded when compressed) and trailers.
//
// Flow control: both bodies are streamed, one 32 KiB buffer per stream.
// A write to a client that does not read blocks once its HTTP/2 window is
// spent, so the stream stops reading the upstream body, whose own window
// (the transport's per-stream receive buffer) then stops the upstream:
// memory per stream is bounded by the windows, never by the body.

// connKey carries a connection's *connInfo in its requests' contexts;
// reqKey carries a request's *reqState to the transport's dialer.
type connKey struct{}
type reqKey struct{}

// h2Listener returns the listener of the http.Server that serves this
// listener's HTTP/2 clients, starting the server on the first call: most
// sandboxes never speak HTTP/2, and an idle sandbox then holds no server
// goroutine per listener (issue #21). It returns nil once shutdown began.
func (s *server) h2Listener() *chanListener {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	if s.httpSrv != nil {
		return s.httpLn
	}
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
	srv, ln := s.httpSrv, s.httpLn
	s.httpWG.Add(1)
	go func() {
		defer s.httpWG.Done()
		srv.Serve(ln)
	}()
	return ln
}

// stopHTTP closes the HTTP/2 server, if it was started, and waits for it.
// shutdown calls it after setting closed, so none starts after.
func (s *server) stopHTTP() {
	s.mu.Lock()
	srv, ln := s.httpSrv, s.httpLn
	s.mu.Unlock()
	if srv != nil {
		ln.Close()
		srv.Close()
	}
	s.httpWG.Wait()
}

// ServeHTTP handles one stream of an intercepted HTTP/2 client (HTTP/1.x
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
	client := r.Body // the client's stream, before shaping wraps it
	if code, body := s.gate(r.Context(), r, rs); code != 0 {
		writeText(w, code, body)
		h2Drain(w, client, nil)
		return
	}
	s.forwardH2(w, r, rs, client)
}

// h2DrainTime and h2DrainMax bound what h2Drain reads.
const (
	h2DrainTime = 2 * time.Second
	h2DrainMax  = 256 << 10
)

// h2Drain reads, for a moment and up to h2DrainMax, what the client still
// sends of its request body once its answer is written, before the handler
// returns. A handler returning first ends the response while the client's
// half of the stream is open, and the server then resets the stream
// (NO_ERROR, RFC 9113 §8.1), which curl 7.88 reports as a framing error for
// a request whose answer it had (an upstream that answers before reading
// the body). kept, when not nil, is the transport's view of the body: the
// drain waits until the transport let go of it, and skips it when that
// does not happen in time (an upload the upstream still reads).
func h2Drain(w http.ResponseWriter, client io.Reader, kept *keptBody) {
	if client == nil || client == http.NoBody {
		return
	}
	rc := http.NewResponseController(w)
	if rc.Flush() != nil { // the answer goes out first
		return
	}
	// The deadline also ends a read the transport may have blocked on the
	// client's stream (holding kept.mu).
	if rc.SetReadDeadline(time.Now().Add(h2DrainTime)) != nil {
		return
	}
	if kept != nil {
		t := time.NewTimer(h2DrainTime)
		defer t.Stop()
		select {
		case <-kept.closed:
		case <-t.C:
			return
		}
		kept.mu.Lock()
		defer kept.mu.Unlock()
	}
	io.Copy(io.Discard, io.LimitReader(client, h2DrainMax))
}

// keptBody is the request body handed to the transport: its Close tells
// h2Drain the transport is done with the body, without closing the
// client's stream (the handler does); its reads are serialized with the
// drain (the server's request body is not safe for concurrent reads).
type keptBody struct {
	mu     sync.Mutex
	rc     io.Reader
	eof    atomic.Bool // the client's whole body was read
	once   sync.Once
	closed chan struct{}
}

func (b *keptBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.eof.Store(true)
	}
	return n, err
}

func (b *keptBody) Close() error {
	b.once.Do(func() { close(b.closed) })
	return nil
}

// forwardH2 sends the checked request r upstream and relays the answer to
// w, streaming both bodies.
func (s *server) forwardH2(w http.ResponseWriter, r *http.Request, rs *reqState, client io.Reader) {
	if r.ContentLength == 0 {
		r.Body = nil // no body: the transport must not wait for one
	}
	var kept *keptBody
	var resp *http.Response
	body := r.Body
	if body != nil {
		kept = &keptBody{rc: body, closed: make(chan struct{})}
		r.Body = kept
	}
	defer func() {
		// The transport may still be blocked reading the client's body
		// (kept.Close does not end that read): closing the body ends it,
		// and comes before the response body's Close, which waits for
		// the transport to let go of the request.
		if body != nil {
			body.Close()
		}
		if resp != nil {
			resp.Body.Close()
		}
	}()
	rs.prepareUpstream(r)
	if _, ok := r.Header["User-Agent"]; !ok {
		r.Header["User-Agent"] = []string{""} // the transport adds none
	}
	r.URL.Scheme, r.URL.Host = rs.scheme, rs.upHostPort
	r.RequestURI = "" // a client request

	// 1xx informational answers (103 Early Hints) are filtered and relayed
	// as they come; the server answers the client's 100-continue itself.
	trace := &httptrace.ClientTrace{
		Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			if code == http.StatusContinue {
				return nil
			}
			hdr := http.Header(h)
			removeHopByHop(hdr)
			rs.filterInformational(hdr)
			wh := w.Header()
			for k, vv := range hdr {
				wh[k] = vv
			}
			w.WriteHeader(code)
			clear(wh)
			return nil
		},
	}
	ctx := httptrace.WithClientTrace(context.WithValue(r.Context(), reqKey{}, rs), trace)
	out := r.WithContext(ctx)
	resp, err := s.p.roundTrip(out, rs)
	if err != nil {
		s.upstreamError(w, r, rs, err)
		return
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// No upgrade on HTTP/2 (the server refuses Upgrade headers).
		err = errors.New("switched protocols on an HTTP/2 request")
	} else {
		removeHopByHop(resp.Header)
		err = filterResponse(rs, resp, r.Method)
	}
	if err != nil {
		s.upstreamError(w, r, rs, err)
		return
	}
	if s.writeH2Response(w, resp, rs) && kept != nil && !kept.eof.Load() {
		h2Drain(w, client, kept)
	}
}

// writeH2Response relays a filtered answer: header, body and trailers.
func (s *server) writeH2Response(w http.ResponseWriter, resp *http.Response, rs *reqState) bool {
	wh := w.Header()
	for k, vv := range resp.Header {
		wh[k] = vv
	}
	// Trailers the upstream announced are announced to the client; others
	// (HTTP/2 upstreams need not announce them) are sent with
	// http.TrailerPrefix.
	announced := len(resp.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range resp.Trailer {
			keys = append(keys, k)
		}
		wh["Trailer"] = []string{strings.Join(keys, ", ")}
	}
	w.WriteHeader(resp.StatusCode)

	if mb, ok := resp.Body.(*memBody); ok {
		// Redacted in memory (filter.go): written at once, no copy.
		if _, err := w.Write(mb.b[mb.off:]); err != nil {
			rs.status, rs.errMsg = 499, "client closed the request"
			return false
		}
		mb.off = len(mb.b)
	} else if !s.copyH2Body(w, resp, rs) {
		return false
	}
	if len(resp.Trailer) == announced {
		for k, vv := range resp.Trailer {
			wh[k] = vv
		}
	} else {
		for k, vv := range resp.Trailer {
			wh[http.TrailerPrefix+k] = vv
		}
	}
	return true
}

// copyH2Body streams resp's body to w, flushing what arrives; false when
// the client went away.
func (s *server) copyH2Body(w http.ResponseWriter, resp *http.Response, rs *reqState) bool {
	buf := copyBufs.Get().(*[32 << 10]byte)
	defer copyBufs.Put(buf)
	rc := http.NewResponseController(w)
	var read int64
	for {
		n, err := resp.Body.Read(buf[:])
		if n > 0 {
			read += int64(n)
			if _, werr := w.Write(buf[:n]); werr != nil {
				rs.status, rs.errMsg = 499, "client closed the request"
				return false
			}
			// Flushed as it arrives (a stream, a slow upstream); a body
			// of known length read to its end goes out with the end of
			// the stream instead.
			if err == nil && (resp.ContentLength < 0 || read < resp.ContentLength) {
				if rc.Flush() != nil {
					rs.status, rs.errMsg = 499, "client closed the request"
					return false
				}
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			// The upstream failed mid-body: the client's stream is reset,
			// so it cannot take the truncated body for a whole one.
			rs.midBodyFailed(err)
			panic(http.ErrAbortHandler)
		}
	}
	return true
}

// upstreamError answers a failed exchange: the client went away (499, no
// answer), request shaping refused the streamed body, or the upstream
// failed (502).
func (s *server) upstreamError(w http.ResponseWriter, r *http.Request, rs *reqState, err error) {
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		rs.status = 499 // the client went away
		rs.errMsg = "client closed the request"
		return
	}
	if code, body, ok := s.shapeFailed(r, rs, err); ok {
		writeText(w, code, body)
		return
	}
	writeText(w, http.StatusBadGateway, "sluice: "+rs.upstreamFailed(err)+"\n")
}

func writeText(w http.ResponseWriter, code int, body string) {
	h := w.Header()
	clear(h)
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Sluice", "refused")
	w.WriteHeader(code)
	io.WriteString(w, body)
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
