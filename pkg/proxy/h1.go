package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// HTTP/1.x clients are served by serveH1 in the connection's own goroutine:
// one loop reads a request, checks it (checkRequest, shared with the HTTP/2
// path), forwards it on an upstream connection pinned to this client
// connection and writes the answer back, streaming both bodies. Against
// http.Server + httputil.ReverseProxy + http.Transport this saves the
// goroutine hand-offs of every request (the Transport's writeLoop and
// readLoop, the server's background read), which dominated the keep-alive
// profile (PERF.md). HTTP/2 clients are served per stream by ServeHTTP
// (h2.go), which shares the gate, prepareUpstream and the response filter.
//
// What the loop does that the standard library did for it:
//   - the server's request checks: HTTP/1.x only, exactly one valid Host on
//     HTTP/1.1, valid header names and values, headers within
//     maxHeaderBytes, 417 for an Expect other than 100-continue;
//   - hop-by-hop headers (RFC 9110 7.6.1) removed both ways, Te: trailers
//     kept, WebSocket upgrades re-announced and switched to a byte copy;
//   - 100-continue answered when the body is first read, other 1xx
//     (103 Early Hints) relayed;
//   - response bodies of unknown length re-chunked and flushed after every
//     read (server-sent events arrive as written), trailers relayed;
//   - upstream connections (upstream.go): pinned per client connection,
//     returned to a shared idle pool (keyed by scheme, authority, TLS name and dial plan)
//     when the client connection ends, checked for a peer close before
//     reuse, and a request without a body retried once on a fresh
//     connection when a reused one turns out dead.

// maxHeaderBytes bounds a request head, as http.Server's MaxHeaderBytes.
const maxHeaderBytes = 1 << 20

// pinnedIdle: a client connection idle for longer returns its upstream
// connection to the pool.
const pinnedIdle = time.Second

// Buffers. An idle client connection holds only its 4 KiB reader (as with
// http.Server); the 16 KiB writer and the upstream connection's reader and
// writer are taken from pools for the length of one exchange, so thousands
// of idle keep-alive connections stay cheap. Large body reads and writes
// bypass the buffers.
var (
	clientReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	h1Readers     = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}
	h1Writers     = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 16<<10) }}
)

func getReader(r io.Reader) *bufio.Reader {
	br := h1Readers.Get().(*bufio.Reader)
	br.Reset(r)
	return br
}

func getWriter(w io.Writer) *bufio.Writer {
	bw := h1Writers.Get().(*bufio.Writer)
	bw.Reset(w)
	return bw
}

func putReader(br *bufio.Reader) {
	br.Reset(nil)
	h1Readers.Put(br)
}

func putWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	h1Writers.Put(bw)
}

// limitReader bounds what a request head may read from the connection.
type limitReader struct {
	r     io.Reader
	n     int64
	hit   bool
	fence *headFence // charges head bytes to the sandbox (fence.go)
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		l.hit = true
		return 0, io.EOF
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	if l.n < maxHeaderBytes+4096 && !l.fence.charge(n) {
		l.n, l.hit = 0, true
		return 0, io.EOF
	}
	return n, err
}

// h1Conn is one HTTP/1.x client connection being served.
type h1Conn struct {
	s  *server
	ci *connInfo
	c  net.Conn // to the client: *tls.Conn or *clientConn
	lr limitReader
	br *bufio.Reader
	bw *bufio.Writer
	up *upConn
	rs reqState
	// linger: the connection ends with part of a request body unread, so
	// it is closed gently (lingeringClose).
	linger bool
	watch  clientWatch
}

// serveH1 serves an intercepted HTTP/1.x connection until it ends, then
// closes it.
func (s *server) serveH1(ctx context.Context, c net.Conn, ci *connInfo) {
	h := &h1Conn{s: s, ci: ci, c: c}
	h.watch.h = h
	h.lr.r, h.lr.n, h.lr.fence = c, math.MaxInt64, s.newHeadFence(ci)
	defer h.lr.fence.done()
	h.br = clientReaders.Get().(*bufio.Reader)
	h.br.Reset(&h.lr)
	defer func() {
		h.releaseUp()
		if h.linger {
			lingeringClose(c, h.br)
		}
		c.Close()
		h.br.Reset(nil)
		clientReaders.Put(h.br)
	}()
	idleTimeout := h.s.p.cfg.IdleTimeout
	for {
		// Wait for the next request; a client idle for longer than
		// pinnedIdle gives its upstream connection back to the pool, so
		// idle keep-alive clients do not hold upstream connections open.
		now := time.Now()
		c.SetReadDeadline(now.Add(min(pinnedIdle, idleTimeout)))
		if _, err := h.br.Peek(1); err != nil {
			if !isTimeout(err) || idleTimeout <= pinnedIdle {
				return
			}
			h.releaseUp()
			c.SetReadDeadline(now.Add(idleTimeout))
			if _, err := h.br.Peek(1); err != nil {
				return
			}
		}
		h.bw = getWriter(c)
		keep := h.serveOne(ctx)
		putWriter(h.bw)
		h.bw = nil
		if h.up != nil {
			h.up.idle()
		}
		if !keep {
			return
		}
	}
}

// serveOne serves one request that has started to arrive; it reports
// whether the connection stays open.
func (h *h1Conn) serveOne(ctx context.Context) bool {
	cfg := &h.s.p.cfg
	if h.br.Buffered() < 4 || !bytesContainsHeadEnd(h.br) {
		h.c.SetReadDeadline(time.Now().Add(cfg.ReadHeaderTimeout))
	}
	h.lr.n, h.lr.hit = maxHeaderBytes+4096, false
	if !h.lr.fence.charge(h.br.Buffered()) {
		h.lr.n = 0 // past the sandbox's request_head_bytes fence: 431 unless the head is complete
	}
	req, err := http.ReadRequest(h.br)
	h.lr.n = math.MaxInt64
	h.lr.fence.done()
	if err != nil {
		switch {
		case h.lr.hit:
			h.badRequest(http.StatusRequestHeaderFieldsTooLarge, "")
		case isTimeout(err), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		default:
			h.badRequest(http.StatusBadRequest, "")
		}
		return false
	}
	if req.Body != http.NoBody || upgradeType(req.Header) != "" {
		// The body (or the upgraded stream) has no deadline; a request
		// without one leaves the head's, replaced before the next read.
		h.c.SetReadDeadline(time.Time{})
	}
	if code, msg := h1RequestError(req); code != 0 {
		h.badRequest(code, msg)
		return false
	}
	expect := false
	if e, ok := req.Header["Expect"]; ok {
		if len(e) != 1 || !strings.EqualFold(e[0], "100-continue") {
			h.badRequest(http.StatusExpectationFailed, "")
			return false
		}
		delete(req.Header, "Expect")
		expect = req.ProtoAtLeast(1, 1) && req.ContentLength != 0
	}

	rs := &h.rs
	rs.begin(h.ci, req)
	keep := h.handle(ctx, req, rs, expect)
	h.s.finish(rs)
	return keep
}

// bytesContainsHeadEnd reports whether br's buffer holds a whole request
// head already (then no read of the head can block).
func bytesContainsHeadEnd(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	return bytes.Contains(b, crlfcrlf)
}

var crlfcrlf = []byte("\r\n\r\n")

// h1RequestError applies http.Server's checks to a request head: a status
// and message when it is refused.
func h1RequestError(req *http.Request) (int, string) {
	if req.ProtoMajor != 1 {
		return http.StatusHTTPVersionNotSupported, "unsupported protocol version"
	}
	// ReadRequest has refused several Host headers and moved the one
	// left (or an absolute-form target's authority) to req.Host.
	if req.ProtoAtLeast(1, 1) && req.Host == "" && req.Method != http.MethodConnect {
		return http.StatusBadRequest, "missing required Host header"
	}
	if req.Host != "" && !httpguts.ValidHostHeader(req.Host) {
		return http.StatusBadRequest, "malformed Host header"
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return http.StatusBadRequest, "invalid header name"
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return http.StatusBadRequest, "invalid header value"
			}
		}
	}
	return 0, ""
}

// badRequest answers a request that cannot be served and ends the
// connection, as http.Server does.
func (h *h1Conn) badRequest(code int, msg string) {
	text := strconv.Itoa(code) + " " + http.StatusText(code)
	if msg != "" {
		text += ": " + msg
	}
	h.bw.WriteString("HTTP/1.1 " + strconv.Itoa(code) + " " + http.StatusText(code) +
		"\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n" + text)
	h.bw.Flush()
}

// handle answers one checked request.
func (h *h1Conn) handle(ctx context.Context, req *http.Request, rs *reqState, expect bool) bool {
	closeAfter := req.Close || !req.ProtoAtLeast(1, 1)
	rs.expect = expect
	var cr *continueReader
	if expect {
		// 100 Continue goes out when the gate or the forwarder first
		// reads the body: never for a request the policy refuses.
		cr = &continueReader{ReadCloser: req.Body, h: h}
		req.Body = cr
	}
	if code, body := h.s.gate(ctx, req, rs); code != 0 {
		return h.refused(code, body, req, cr, closeAfter)
	}
	return h.forward(ctx, req, rs, closeAfter)
}

// refused answers a request the gate refused. The rest of the body is read,
// within reason, to keep the connection; a client still waiting for 100
// Continue (cr not sent) never sends its body, so its connection is closed.
func (h *h1Conn) refused(code int, body string, req *http.Request, cr *continueReader, closeAfter bool) bool {
	if cr != nil && !cr.sent {
		closeAfter = true
	} else if !discardBody(req.Body) {
		closeAfter = true
		h.linger = true
	}
	return h.writeText(code, body, req, closeAfter) && !closeAfter
}

// discardBody reads up to 256 KiB of an unread request body; it reports
// whether the body was consumed.
func discardBody(b io.ReadCloser) bool {
	if b == nil || b == http.NoBody {
		return true
	}
	n, err := io.CopyN(io.Discard, b, 256<<10+1)
	b.Close()
	return n <= 256<<10 && (err == nil || err == io.EOF)
}

// continueReader answers 100 Continue when the body is first read.
type continueReader struct {
	io.ReadCloser
	h    *h1Conn
	sent bool
	err  error
}

func (r *continueReader) Read(p []byte) (int, error) {
	if !r.sent {
		r.sent = true
		r.h.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
		r.err = r.h.bw.Flush()
	}
	if r.err != nil {
		return 0, r.err
	}
	return r.ReadCloser.Read(p)
}

// writeText answers locally with a plain-text body.
func (h *h1Conn) writeText(code int, body string, req *http.Request, closeAfter bool) bool {
	bw := h.bw
	writeStatusLine(bw, req, code, http.StatusText(code))
	bw.WriteString("Content-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nX-Sluice: refused\r\nContent-Length: ")
	bw.WriteString(strconv.Itoa(len(body)))
	if closeAfter {
		bw.WriteString("\r\nConnection: close")
	}
	bw.WriteString("\r\n\r\n")
	if req.Method != http.MethodHead {
		bw.WriteString(body)
	}
	return bw.Flush() == nil
}

func writeStatusLine(bw *bufio.Writer, req *http.Request, code int, text string) {
	if req.ProtoAtLeast(1, 1) {
		bw.WriteString("HTTP/1.1 ")
	} else {
		bw.WriteString("HTTP/1.0 ")
	}
	if code < 100 || code > 999 {
		code = http.StatusBadGateway // ReadResponse accepts only 3 digits
	}
	bw.WriteByte(byte('0' + code/100))
	bw.WriteByte(byte('0' + code/10%10))
	bw.WriteByte(byte('0' + code%10))
	bw.WriteByte(' ')
	bw.WriteString(text)
	bw.WriteString("\r\n")
}

// hopHeaders are removed by proxies (RFC 9110 7.6.1), with those named in
// Connection.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

func removeHopByHop(h http.Header) {
	for _, f := range h["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				h.Del(sf)
			}
		}
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
}

func upgradeType(h http.Header) string {
	if !httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}

// forward sends req upstream and relays the answer.
func (h *h1Conn) forward(ctx context.Context, req *http.Request, rs *reqState, closeAfter bool) bool {
	up := rs.prepareUpstream(req)

	resp, closeAfter := h.exchange(ctx, req, rs, closeAfter)
	if resp == nil {
		return false
	}
	u := h.up
	if err := filterResponse(rs, resp, req.Method); err != nil {
		resp.Body.Close()
		h.dropUp()
		return h.failed(req, rs, err)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return h.switchProtocols(req, resp, rs, up)
	}
	keep, upOK := h.writeResponse(req, resp, closeAfter)
	resp.Body.Close()
	if !upOK || resp.Close || u.br.Buffered() > 0 {
		h.dropUp()
	} else {
		u.idleAt = time.Now()
	}
	return keep
}

// exchange sends req on an upstream connection and reads the answer,
// retrying once on a fresh connection when a reused one turns out dead. A
// nil response means the client has been answered already (an error) and
// the connection ends; closeAfter comes back true when the answer spent the
// upstream connection.
func (h *h1Conn) exchange(ctx context.Context, req *http.Request, rs *reqState, closeAfter bool) (*http.Response, bool) {
	for attempt := 0; ; attempt++ {
		u, err := h.upstream(ctx, rs)
		if err != nil {
			h.failed(req, rs, err)
			return nil, closeAfter
		}
		u.busy()
		reused := u.used
		u.used = true
		wrote := false
		if err = writeRequest(u.bw, req); err == nil {
			err = u.bw.Flush()
		}
		if code, body, ok := h.s.shapeFailed(req, rs, err); ok {
			// Shaping refused the body while streaming: the upstream
			// connection is dropped before the request completes.
			h.dropUp()
			h.linger = true
			h.writeText(code, body, req, true)
			return nil, closeAfter
		}
		if be, ok := asBodyError(err); ok {
			// The client's body failed (it went away, or its chunking is
			// broken): nothing sensible reaches the upstream.
			h.dropUp()
			h.linger = true
			rs.status, rs.errMsg = http.StatusBadRequest, "reading the request body: "+be.err.Error()
			h.writeText(http.StatusBadRequest, "sluice: "+rs.errMsg+"\n", req, true)
			return nil, closeAfter
		}
		if err != nil && req.Body != nil && req.Body != http.NoBody {
			// An upstream may answer early and stop reading a body it
			// refuses (401, 413): relay that answer rather than a 502.
			u.c.SetReadDeadline(time.Now().Add(earlyAnswerWait))
			if r, rerr := http.ReadResponse(u.br, req); rerr == nil && r.StatusCode >= 200 {
				u.c.SetReadDeadline(time.Time{})
				r.Close = true // the upstream connection is spent
				h.linger = true
				return r, true
			}
		}
		if err == nil {
			wrote = true
			var resp *http.Response
			if resp, err = h.readResponse(u, req); err == nil {
				return resp, closeAfter
			}
		}
		h.dropUp()
		if h.watch.gone.Load() {
			rs.status, rs.errMsg = 499, "client closed the request"
			return nil, closeAfter
		}
		// A reused connection the upstream closed while idle: retry a
		// request that has no body once on a fresh one. A request that may
		// have reached the upstream is retried only when repeating it is
		// harmless.
		if attempt == 0 && reused && !isTimeout(err) && ctx.Err() == nil &&
			(req.Body == nil || req.Body == http.NoBody) && (!wrote || replayable(req)) {
			continue
		}
		h.failed(req, rs, err)
		return nil, closeAfter
	}
}

// asBodyError is errors.As for a bodyError, without allocating when err is
// nil (the target of errors.As escapes).
func asBodyError(err error) (bodyError, bool) {
	if err == nil {
		return bodyError{}, false
	}
	var be bodyError
	ok := errors.As(err, &be)
	return be, ok
}

// isDecimal reports whether s is n written in decimal without sign or
// leading zeros (what strconv.FormatInt writes).
func isDecimal(s string, n int64) bool {
	if len(s) == 0 || len(s) > 19 || (len(s) > 1 && s[0] == '0') {
		return false
	}
	var m int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return false
		}
		m = m*10 + int64(c-'0')
	}
	return m == n
}

// earlyAnswerWait bounds the wait for an upstream's answer after it
// stopped reading a request body.
const earlyAnswerWait = 2 * time.Second

func replayable(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}

// readResponse reads the upstream's answer to req, relaying 1xx
// informational responses other than 100 and 101.
func (h *h1Conn) readResponse(u *upConn, req *http.Request) (*http.Response, error) {
	if d := h.s.p.cfg.ResponseHeaderTimeout; d > 0 {
		u.c.SetReadDeadline(time.Now().Add(d))
		defer u.c.SetReadDeadline(time.Time{})
	}
	h.watch.arm(u, watchAfter)
	defer h.watch.disarm()
	for {
		resp, err := http.ReadResponse(u.br, req)
		if err != nil {
			return nil, err
		}
		code := resp.StatusCode
		if code < 100 || code > 199 || code == http.StatusSwitchingProtocols {
			return resp, nil
		}
		if code != http.StatusContinue && req.ProtoAtLeast(1, 1) {
			removeHopByHop(resp.Header)
			h.rs.filterInformationalResponse(resp)
			writeStatusLine(h.bw, req, code, statusText(resp))
			writeHeader(h.bw, resp.Header)
			h.bw.WriteString("\r\n")
			if err := h.bw.Flush(); err != nil {
				return nil, err
			}
		}
	}
}

// statusText is the reason phrase of resp's status line.
func statusText(resp *http.Response) string {
	if _, text, ok := strings.Cut(resp.Status, " "); ok {
		return text
	}
	return http.StatusText(resp.StatusCode)
}

// failed answers 502 for an upstream failure and ends the connection (the
// request body may be half read).
func (h *h1Conn) failed(req *http.Request, rs *reqState, err error) bool {
	h.linger = req.Body != nil && req.Body != http.NoBody
	msg := rs.upstreamFailed(err)
	h.writeText(http.StatusBadGateway, "sluice: "+msg+"\n", req, true)
	return false
}

// writeResponse relays resp to the client. keep reports whether the client
// connection stays open, upOK whether the upstream body was read to its end.
func (h *h1Conn) writeResponse(req *http.Request, resp *http.Response, closeAfter bool) (keep, upOK bool) {
	bw := h.bw
	hdr := resp.Header
	removeHopByHop(hdr)
	code := resp.StatusCode
	noBody := req.Method == http.MethodHead || code == http.StatusNoContent || code == http.StatusNotModified
	chunked := false
	switch {
	case noBody:
	case resp.ContentLength >= 0:
		if v := hdr["Content-Length"]; len(v) != 1 || !isDecimal(v[0], resp.ContentLength) {
			hdr["Content-Length"] = []string{strconv.FormatInt(resp.ContentLength, 10)}
		}
	case req.ProtoAtLeast(1, 1):
		chunked = true
		delete(hdr, "Content-Length")
	default:
		delete(hdr, "Content-Length")
		closeAfter = true // the end of the body is the end of the connection
	}
	writeStatusLine(bw, req, code, statusText(resp))
	writeHeader(bw, hdr)
	if chunked {
		bw.WriteString("Transfer-Encoding: chunked\r\n")
		if len(resp.Trailer) > 0 {
			keys := make([]string, 0, len(resp.Trailer))
			for k := range resp.Trailer {
				keys = append(keys, k)
			}
			bw.WriteString("Trailer: " + strings.Join(keys, ", ") + "\r\n")
		}
	}
	if closeAfter {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
	if noBody {
		_, err := io.Copy(io.Discard, resp.Body)
		return bw.Flush() == nil && !closeAfter, err == nil
	}
	buf := copyBufs.Get().(*[32 << 10]byte)
	defer copyBufs.Put(buf)
	if resp.ContentLength < 0 {
		h.watch.arm(h.up, 0) // a stream: it may be quiet for long
	} else {
		h.watch.arm(h.up, watchAfter)
	}
	var werr, rerr error
	for werr == nil {
		n, err := resp.Body.Read(buf[:])
		if n > 0 {
			if chunked {
				var hb [20]byte
				bw.Write(strconv.AppendInt(hb[:0], int64(n), 16))
				bw.WriteString("\r\n")
				bw.Write(buf[:n])
				bw.WriteString("\r\n")
				// Unknown length (event streams, chunked): every read
				// reaches the client at once.
				werr = bw.Flush()
			} else {
				_, werr = bw.Write(buf[:n])
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			rerr = err
			break
		}
	}
	h.watch.disarm()
	if werr != nil || h.watch.gone.Load() {
		h.rs.status, h.rs.errMsg = 499, "client closed the request"
		return false, false
	}
	if rerr != nil {
		// The upstream failed mid-body: the client sees a truncated body
		// (no terminating chunk, or fewer bytes than announced).
		bw.Flush()
		h.rs.midBodyFailed(rerr)
		return false, false
	}
	if chunked {
		bw.WriteString("0\r\n")
		for k, vv := range resp.Trailer {
			for _, v := range vv {
				writeField(bw, k, v)
			}
		}
		bw.WriteString("\r\n")
	}
	return bw.Flush() == nil && !closeAfter, true
}

// writeHeader writes the fields of h (in map order).
func writeHeader(bw *bufio.Writer, h http.Header) {
	for k, vv := range h {
		for _, v := range vv {
			writeField(bw, k, v)
		}
	}
}

// writeField writes one header field; CR and LF in the value become
// spaces, as in Header.Write, so no value can add a field.
func writeField(bw *bufio.Writer, k, v string) {
	bw.WriteString(k)
	bw.WriteString(": ")
	if strings.ContainsAny(v, "\r\n") {
		v = strings.NewReplacer("\r", " ", "\n", " ").Replace(v)
	}
	bw.WriteString(strings.TrimSpace(v))
	bw.WriteString("\r\n")
}

// switchProtocols relays a 101 answer to a WebSocket upgrade and then the
// bytes both ways until either side ends.
func (h *h1Conn) switchProtocols(req *http.Request, resp *http.Response, rs *reqState, reqUp string) bool {
	u := h.up // the connection belongs to this exchange now: never pooled
	defer h.dropUp()
	respUp := upgradeType(resp.Header)
	if reqUp == "" || !strings.EqualFold(reqUp, respUp) {
		return h.failed(req, rs, errors.New("switched to protocol "+strconv.Quote(respUp)+" when "+strconv.Quote(reqUp)+" was requested"))
	}
	removeHopByHop(resp.Header)
	resp.Header["Connection"] = []string{"Upgrade"}
	resp.Header["Upgrade"] = []string{respUp}
	writeStatusLine(h.bw, req, resp.StatusCode, statusText(resp))
	writeHeader(h.bw, resp.Header)
	h.bw.WriteString("\r\n")
	if h.bw.Flush() != nil {
		return false
	}
	done := make(chan struct{}, 2)
	go func() {
		copyWith(u.c, h.br) // buffered client bytes first
		done <- struct{}{}
	}()
	go func() {
		copyWith(h.c, rs.upgradeReader(u.br))
		done <- struct{}{}
	}()
	<-done
	// Either side ended: end both, as ReverseProxy does.
	u.c.Close()
	h.c.Close()
	<-done
	return false
}

func copyWith(dst io.Writer, src io.Reader) {
	buf := copyBufs.Get().(*[32 << 10]byte)
	defer copyBufs.Put(buf)
	io.CopyBuffer(dst, src, buf[:])
}

// watchAfter: a wait on the upstream (response head, known-length body)
// longer than this starts watching the client for a close; streamed
// bodies of unknown length are watched from the start.
const watchAfter = time.Second

// aLongTimeAgo is a read deadline that has passed: it wakes a blocked read.
var aLongTimeAgo = time.Unix(1, 0)

// clientWatch notices a client that goes away while sluice waits on the
// upstream (a long poll, a quiet event stream), and closes the upstream
// connection so the wait ends, as http.Server's background read did. It
// costs a goroutine only for waits that last.
type clientWatch struct {
	h       *h1Conn
	mu      sync.Mutex
	u       *upConn // armed: the upstream connection to close
	running bool
	done    chan struct{}
	gone    atomic.Bool
	timer   *time.Timer
}

// arm watches the client for the wait on u, after the given delay.
func (w *clientWatch) arm(u *upConn, after time.Duration) {
	w.mu.Lock()
	w.u = u
	w.mu.Unlock()
	if after == 0 {
		w.start()
		return
	}
	if w.timer == nil {
		w.timer = time.AfterFunc(after, w.start)
	} else {
		w.timer.Reset(after)
	}
}

func (w *clientWatch) start() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.u == nil || w.running {
		return
	}
	w.running = true
	w.done = make(chan struct{})
	u, done, h := w.u, w.done, w.h
	// The request's head deadline may still be set; the watch has none
	// (disarm sets one in the past, after this, under the same lock).
	h.c.SetReadDeadline(time.Time{})
	go func() {
		defer close(done)
		// Data (a pipelined request) or a timeout from disarm end the
		// watch; an EOF or a reset means the client is gone.
		if _, err := h.br.Peek(1); err != nil && !isTimeout(err) {
			w.gone.Store(true)
			u.c.Close()
		}
	}()
}

// disarm ends the watch; the client connection is the caller's again.
func (w *clientWatch) disarm() {
	if w.timer != nil {
		w.timer.Stop()
	}
	w.mu.Lock()
	w.u = nil
	running, done := w.running, w.done
	w.running = false
	w.mu.Unlock()
	if running {
		w.h.c.SetReadDeadline(aLongTimeAgo)
		<-done
		w.h.c.SetReadDeadline(time.Time{})
	}
}

// lingerTime bounds lingeringClose.
const lingerTime = 500 * time.Millisecond

// lingeringClose ends the sending side and reads what the client still
// sends for a moment: closing a socket with unread data makes the kernel
// reset the connection, and a client still uploading could lose the
// answer it has been sent (http.Server does the same).
func lingeringClose(c net.Conn, br *bufio.Reader) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	c.SetReadDeadline(time.Now().Add(lingerTime))
	buf := copyBufs.Get().(*[32 << 10]byte)
	defer copyBufs.Put(buf)
	io.CopyBuffer(io.Discard, br, buf[:])
}
