package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The upstream side of an intercepted request. Nothing here resolves the
// request's host: a request goes to its dial plan (the original
// destination, or a remap target through Config.Resolve), and an https
// upstream is verified for the name the request is forwarded to.
//
//   - HTTP/1.x clients (h1.go) use upConn: a connection pinned to the client
//     connection while its requests go to the same upstream, then returned
//     to the Proxy's idlePool, keyed by upKey (scheme, authority, TLS name,
//     dial plan). A connection admitted by a CIDR rule never shares.
//     writeRequest writes a request on it; h1.go reads the answer.
//   - HTTP/2 clients (h2.go) use the http.Transport pool p.h2 (newTransport:
//     HTTP/2 where the upstream negotiates it, many streams on one
//     connection, else HTTP/1.1), through roundTrip; CIDR-admitted
//     connections have their own (connInfo.ownTransport).
//
// upstreamFailed turns a failed exchange into the 502 the sandbox reads.

// dialPlan says where an upstream connection goes: the original
// destination, or a remap target resolved by Config.Resolve.
type dialPlan struct {
	addr    netip.AddrPort
	resolve string
	port    uint16
}

// dialUpstream is the transport's dialer: it never resolves the request's
// host; it dials the dial plan carried by the request context.
func (p *Proxy) dialUpstream(ctx context.Context, network, _ string) (net.Conn, error) {
	rs, _ := ctx.Value(reqKey{}).(*reqState)
	if rs == nil {
		return nil, errors.New("upstream dial without a sluice request")
	}
	c, err := p.dial(ctx, network, rs.plan)
	if err != nil {
		return nil, err
	}
	return newBatchedConn(c), nil // shared by many streams (batch.go)
}

// dial connects to a dial plan.
func (p *Proxy) dial(ctx context.Context, network string, plan dialPlan) (net.Conn, error) {
	if plan.resolve == "" {
		return p.cfg.Dial(ctx, network, plan.addr.String())
	}
	addrs, err := p.cfg.Resolve(ctx, plan.resolve)
	if err != nil {
		return nil, fmt.Errorf("resolving %s: %w", plan.resolve, err)
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("resolving %s: no addresses", plan.resolve)
	}
	var first error
	for _, a := range addrs {
		c, err := p.cfg.Dial(ctx, network, netip.AddrPortFrom(a.Unmap(), plan.port).String())
		if err == nil {
			return c, nil
		}
		if first == nil {
			first = err
		}
	}
	return nil, first
}

// newTransport is an upstream pool: HTTP/1.1 only, or HTTP/2 where the
// upstream offers it. It never resolves names (dialUpstream).
func (p *Proxy) newTransport(h2 bool, idlePerHost int) *http.Transport {
	cfg := &p.cfg
	t := &http.Transport{
		Proxy:       nil, // never an environment proxy
		DialContext: p.dialUpstream,
		TLSClientConfig: &tls.Config{
			RootCAs:            cfg.RootCAs,
			MinVersion:         tls.VersionTLS12,
			ClientSessionCache: p.sessions,
		},
		ForceAttemptHTTP2:     h2,
		DisableCompression:    true, // pass Accept-Encoding and bodies through untouched
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   idlePerHost,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   cfg.HandshakeTimeout,
		ExpectContinueTimeout: time.Second,
		ResponseHeaderTimeout: cfg.ResponseHeaderTimeout,
		WriteBufferSize:       32 << 10,
		ReadBufferSize:        32 << 10,
	}
	if !h2 {
		t.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return t
}

// roundTrip sends a stream of an HTTP/2 client (h2.go) upstream on the
// shared pool: over HTTP/2 where the upstream negotiates it (the streams of
// every client connection to that upstream share its connections), else
// over HTTP/1.1. A connection admitted by a CIDR rule uses its own pool.
// r's context carries rs (reqKey) for dialUpstream.
func (p *Proxy) roundTrip(r *http.Request, rs *reqState) (*http.Response, error) {
	if rs.ci.viaCIDR {
		return rs.ci.ownTransport(p, true).RoundTrip(r)
	}
	// The transport learns that an upstream speaks HTTP/2 only from its
	// first connection's handshake; until then every request dials its
	// own (a burst of 50 streams dialed up to 38). The first request to
	// an authority dials; the others wait until it has its connection,
	// then share it (HTTP/2) or dial their own (HTTP/1.1).
	key := rs.scheme + "://" + rs.upHostPort
	first := &upFirst{up: make(chan struct{})}
	if v, loaded := p.firstConn.LoadOrStore(key, first); loaded {
		f := v.(*upFirst)
		select {
		case <-f.up:
		case <-r.Context().Done():
			return nil, r.Context().Err()
		}
		return p.h2.RoundTrip(r)
	}
	r = r.WithContext(httptrace.WithClientTrace(r.Context(), &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) { first.done() },
	}))
	resp, err := p.h2.RoundTrip(r)
	if err != nil {
		p.firstConn.Delete(key) // the next request dials first again
	}
	first.done()
	return resp, err
}

// upFirst is closed when the first request to an upstream authority on the
// HTTP/2 path has its connection.
type upFirst struct {
	once sync.Once
	up   chan struct{}
}

func (f *upFirst) done() { f.once.Do(func() { close(f.up) }) }

// idleCheckAfter: a pinned upstream idle for longer is checked for a peer
// close before it carries the next request.
const idleCheckAfter = 100 * time.Millisecond

// upKey identifies upstream connections that may carry each other's
// requests.
type upKey struct {
	scheme, hostPort, serverName string
	plan                         dialPlan
}

// upConn is one upstream connection.
type upConn struct {
	key    upKey
	raw    net.Conn // the TCP connection (under TLS for https)
	c      net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	used   bool
	idleAt time.Time
	timer  *time.Timer // removes it from the idle pool
}

func (u *upConn) close() {
	u.c.Close()
	u.idle()
}

// busy gives u its buffers for an exchange.
func (u *upConn) busy() {
	if u.br == nil {
		u.br, u.bw = getReader(u.c), getWriter(u.c)
	}
}

// idle returns u's buffers between exchanges (the caller has made sure
// nothing is buffered: see forward).
func (u *upConn) idle() {
	if u.br != nil {
		putReader(u.br)
		putWriter(u.bw)
		u.br, u.bw = nil, nil
	}
}

// alive reports whether an idle upstream connection can carry a request:
// the peer has not closed it and sent nothing unasked (one MSG_PEEK).
func (u *upConn) alive() bool {
	if u.br != nil && u.br.Buffered() > 0 {
		return false
	}
	sc, ok := u.raw.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := false
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		alive = n < 0 && (err == syscall.EAGAIN || err == syscall.EWOULDBLOCK)
		return true
	})
	return err == nil && alive
}

// upstream returns the connection for rs: the pinned one if it fits, else
// an idle pooled one, else a new one.
func (h *h1Conn) upstream(ctx context.Context, rs *reqState) (*upConn, error) {
	key := upKey{scheme: rs.scheme, hostPort: rs.upHostPort, plan: rs.plan}
	if rs.scheme == "https" {
		key.serverName = rs.upHost
	}
	if u := h.up; u != nil {
		if u.key == key && (time.Since(u.idleAt) < idleCheckAfter || u.alive()) {
			return u, nil
		}
		h.releaseUp()
	}
	p := h.s.p
	if !h.ci.viaCIDR {
		for {
			u := p.idle.get(key)
			if u == nil {
				break
			}
			if u.alive() {
				return h.pin(u)
			}
			u.close()
		}
	}
	u, err := p.dialUp(ctx, key)
	if err != nil {
		return nil, err
	}
	return h.pin(u)
}

// pin makes u this connection's upstream, tracked by the server so that
// stopping Serve closes it (a request waiting on a silent upstream must not
// hold Serve up).
func (h *h1Conn) pin(u *upConn) (*upConn, error) {
	if !h.s.track(u.raw) {
		u.close()
		return nil, net.ErrClosed
	}
	h.up = u
	return u, nil
}

// unpin detaches the pinned upstream connection and returns it.
func (h *h1Conn) unpin() *upConn {
	u := h.up
	if u != nil {
		h.s.untrack(u.raw)
		h.up = nil
	}
	return u
}

// dropUp closes the pinned upstream connection.
func (h *h1Conn) dropUp() {
	if u := h.unpin(); u != nil {
		u.close()
	}
}

// releaseUp returns the pinned upstream connection to the idle pool (never
// one of a connection admitted by a CIDR rule: those keep their own).
func (h *h1Conn) releaseUp() {
	u := h.unpin()
	if u == nil {
		return
	}
	if h.ci.viaCIDR || !h.s.p.idle.put(u, h.s.p.cfg.MaxIdleConnsPerHost) {
		u.close()
	}
}

// dialUp connects to key's upstream and, for https, verifies its
// certificate for the server name against the configured roots.
func (p *Proxy) dialUp(ctx context.Context, key upKey) (*upConn, error) {
	raw, err := p.dial(ctx, "tcp", key.plan)
	if err != nil {
		return nil, err
	}
	c := raw
	if key.scheme == "https" {
		tc := tls.Client(raw, p.upstreamTLS(key.serverName))
		hctx, cancel := context.WithTimeout(ctx, p.cfg.HandshakeTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			raw.Close()
			return nil, err
		}
		c = tc
	}
	return &upConn{key: key, raw: raw, c: c}, nil
}

// upstreamTLS is the client configuration for an upstream name (cached:
// one per name).
func (p *Proxy) upstreamTLS(name string) *tls.Config {
	if c, ok := p.upTLS.Load(name); ok {
		return c.(*tls.Config)
	}
	c := &tls.Config{
		ServerName:         name,
		RootCAs:            p.cfg.RootCAs,
		MinVersion:         tls.VersionTLS12,
		ClientSessionCache: p.sessions,
	}
	if n := p.upTLSCount.Add(1); n > 4096 {
		p.upTLS.Clear() // bound the cache; configurations are cheap to make
		p.upTLSCount.Store(0)
	}
	p.upTLS.Store(name, c)
	return c
}

// idlePool keeps upstream connections between client connections.
type idlePool struct {
	mu     sync.Mutex
	conns  map[upKey][]*upConn
	closed bool
}

// get takes the most recently idle connection for key, or nil.
func (ip *idlePool) get(key upKey) *upConn {
	ip.mu.Lock()
	defer ip.mu.Unlock()
	l := ip.conns[key]
	if len(l) == 0 {
		return nil
	}
	u := l[len(l)-1]
	l[len(l)-1] = nil
	if len(l) == 1 {
		delete(ip.conns, key)
	} else {
		ip.conns[key] = l[:len(l)-1]
	}
	u.timer.Stop()
	return u
}

// put keeps u for reuse; false when the pool is full or closed.
func (ip *idlePool) put(u *upConn, max int) bool {
	ip.mu.Lock()
	defer ip.mu.Unlock()
	if ip.closed || len(ip.conns[u.key]) >= max {
		return false
	}
	if ip.conns == nil {
		ip.conns = make(map[upKey][]*upConn)
	}
	ip.conns[u.key] = append(ip.conns[u.key], u)
	u.idleAt = time.Now()
	if u.timer == nil {
		u.timer = time.AfterFunc(idleConnTimeout, func() { ip.expire(u) })
	} else {
		u.timer.Reset(idleConnTimeout)
	}
	return true
}

// idleConnTimeout closes pooled upstream connections idle for longer.
const idleConnTimeout = 90 * time.Second

func (ip *idlePool) expire(u *upConn) {
	ip.mu.Lock()
	l := ip.conns[u.key]
	for i, x := range l {
		if x == u {
			l = append(l[:i], l[i+1:]...)
			if len(l) == 0 {
				delete(ip.conns, u.key)
			} else {
				ip.conns[u.key] = l
			}
			ip.mu.Unlock()
			u.close()
			return
		}
	}
	ip.mu.Unlock()
}

// len is the number of idle connections.
func (ip *idlePool) len() int {
	ip.mu.Lock()
	defer ip.mu.Unlock()
	n := 0
	for _, l := range ip.conns {
		n += len(l)
	}
	return n
}

// closeAll closes every idle connection; later puts are refused.
func (ip *idlePool) closeAll() {
	ip.mu.Lock()
	all := ip.conns
	ip.conns, ip.closed = nil, true
	ip.mu.Unlock()
	for _, l := range all {
		for _, u := range l {
			u.timer.Stop()
			u.close()
		}
	}
}

// writeRequest writes req's head and body for an HTTP/1.1 upstream, as
// Request.Write would for a client request (origin-form target, Host,
// framing from ContentLength, request trailers), without adding a
// User-Agent. The caller flushes.
func writeRequest(bw *bufio.Writer, req *http.Request) error {
	bw.WriteString(req.Method)
	bw.WriteByte(' ')
	bw.WriteString(req.URL.RequestURI())
	bw.WriteString(" HTTP/1.1\r\n")
	writeField(bw, "Host", req.Host)
	delete(req.Header, "Content-Length")
	delete(req.Header, "Transfer-Encoding")
	body := req.Body
	if body == http.NoBody {
		body = nil
	}
	chunked := body != nil && req.ContentLength < 0
	switch {
	case chunked:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
		if len(req.Trailer) > 0 {
			keys := make([]string, 0, len(req.Trailer))
			for k := range req.Trailer {
				keys = append(keys, k)
			}
			writeField(bw, "Trailer", strings.Join(keys, ", "))
		}
	case req.ContentLength > 0:
		var b [20]byte
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(b[:0], req.ContentLength, 10))
		bw.WriteString("\r\n")
	case req.Method == http.MethodPost || req.Method == http.MethodPut || req.Method == http.MethodPatch:
		bw.WriteString("Content-Length: 0\r\n")
	}
	writeHeader(bw, req.Header)
	bw.WriteString("\r\n")
	if body == nil {
		return nil
	}
	if !chunked {
		br := bodyReader{r: io.LimitReader(body, req.ContentLength)}
		n, err := bw.ReadFrom(&br)
		if br.err != nil {
			return bodyError{br.err}
		}
		if err == nil && n != req.ContentLength {
			err = bodyError{io.ErrUnexpectedEOF}
		}
		return err
	}
	buf := copyBufs.Get().(*[32 << 10]byte)
	defer copyBufs.Put(buf)
	for {
		n, err := body.Read(buf[:])
		if err != nil && err != io.EOF {
			return bodyError{err}
		}
		if n > 0 {
			var hb [20]byte
			bw.Write(strconv.AppendInt(hb[:0], int64(n), 16))
			bw.WriteString("\r\n")
			bw.Write(buf[:n])
			bw.WriteString("\r\n")
			// Streamed request bodies reach the upstream as they come.
			if ferr := bw.Flush(); ferr != nil {
				return ferr
			}
		}
		if err == io.EOF {
			break
		}
	}
	bw.WriteString("0\r\n")
	for k, vv := range req.Trailer {
		for _, v := range vv {
			writeField(bw, k, v)
		}
	}
	bw.WriteString("\r\n")
	return nil
}

// bodyError is a failure to read the client's request body.
type bodyError struct{ err error }

func (e bodyError) Error() string { return "reading the request body: " + e.err.Error() }

func (e bodyError) Unwrap() error { return e.err }

// bodyReader records the error of the client's body apart from those of
// the upstream write.
type bodyReader struct {
	r   io.Reader
	err error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

// midBodyFailed records an upstream that failed after its answer's header
// was relayed: the client sees a truncated body (HTTP/1.x) or a reset
// stream (HTTP/2).
func (rs *reqState) midBodyFailed(err error) {
	rs.errMsg = rs.redactMessage("upstream " + rs.upHostPort + " failed mid-body: " + err.Error())
}

// upstreamFailed records a failed upstream exchange (502) and returns the
// message for the sandbox.
func (rs *reqState) upstreamFailed(err error) string {
	rs.status = http.StatusBadGateway
	var msg string
	var ve *tls.CertificateVerificationError
	var he x509.HostnameError
	var ua x509.UnknownAuthorityError
	switch {
	case errors.As(err, &ve), errors.As(err, &he), errors.As(err, &ua):
		msg = fmt.Sprintf("upstream %s failed TLS verification: %v", rs.upHostPort, err)
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		msg = fmt.Sprintf("upstream %s timed out", rs.upHostPort)
	default:
		msg = fmt.Sprintf("upstream %s: %v", rs.upHostPort, err)
	}
	msg = rs.redactMessage(msg)
	rs.errMsg = msg
	return msg
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
