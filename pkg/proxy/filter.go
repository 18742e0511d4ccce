package proxy

import (
	"bufio"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
	"github.com/sluice-dev/sluice/pkg/audit"
)

// The response filter: what an upstream answers passes here before it
// reaches the sandbox, on both the HTTP/1.x loop (h1.go) and the HTTP/2
// front end (h2.go). When the request
// carried injected secrets, every part of the answer the sandbox can read
// is redacted (redact.go): the final header, 1xx informational headers
// (103 Early Hints), the body after content decoding (gzip, deflate, br,
// zstd; an unknown coding fails closed with 502), trailers, and the
// server's WebSocket frames after a 101.

// upstreamRequest adjusts the headers of a request that carries injected
// secrets before it goes upstream: ask for an identity body (the filter
// still decodes one that comes compressed anyway), and offer no WebSocket
// extension (permessage-deflate frames could not be redacted).
func (rs *reqState) upstreamRequest(h http.Header) {
	if rs.secrets == nil {
		return
	}
	h["Accept-Encoding"] = identity
	delete(h, "Sec-Websocket-Extensions")
}

// identity is the Accept-Encoding of a request carrying secrets (shared:
// never appended to).
var identity = []string{"identity"}

// filterResponse records the upstream's answer to rs and filters it before
// it reaches the sandbox: no Alt-Svc, and injected secrets echoed back
// redacted. An error means the answer cannot be filtered: the sandbox gets
// a 502 instead.
func filterResponse(rs *reqState, resp *http.Response, method string) error {
	rs.status = resp.StatusCode
	rs.headerAt = time.Now()
	// HTTP/3 (QUIC) to an intercepted host would bypass interception; keep
	// clients on TCP.
	resp.Header.Del("Alt-Svc")
	if rs.secrets == nil {
		return nil
	}
	if where := rs.secrets.header(resp.Header); where != "" {
		rs.ci.s.secretEvent(rs, "injected secret echoed in response header "+where)
	}
	rs.filterStatus(resp)
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return rs.filterUpgrade(resp)
	}
	if resp.Body == nil || resp.Body == http.NoBody || method == http.MethodHead ||
		resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified {
		return nil
	}
	decoded, err := decodeBody(resp)
	if err != nil {
		return err
	}
	if !decoded && resp.ContentLength >= 0 && resp.ContentLength <= maxBufferedRedact {
		return rs.bufferBody(resp)
	}
	rr := rs.secrets.reader(resp.Body, rs.bodyEcho)
	rr.rs, rr.resp = rs, resp
	resp.Body = rr
	resp.ContentLength = -1
	resp.Header.Del("Content-Length")
	return nil
}

// bufferBody redacts a small body of known length in memory, keeping a
// Content-Length. It reads to the end of the body, so trailers (HTTP/2
// allows them after a body of known length) are read and filtered too.
func (rs *reqState) bufferBody(resp *http.Response) error {
	mb := newMemBody(resp.ContentLength)
	var err error
	mb.b, err = readAtMost(resp.Body, mb.b, resp.ContentLength)
	if err == nil {
		var one [1]byte
		var n int
		n, err = io.ReadFull(resp.Body, one[:])
		switch {
		case n > 0:
			err = errors.New("response body longer than its Content-Length")
		case err == io.EOF:
			err = nil
		}
	}
	resp.Body.Close()
	if err != nil {
		mb.Close()
		return fmt.Errorf("reading response body: %w", err)
	}
	if out, hit := rs.secrets.replace(nil, mb.b); hit {
		rs.bodyEcho()
		mb.Close()
		mb = &memBody{b: out}
	}
	rs.filterTrailer(resp)
	resp.Body = mb
	if int64(len(mb.b)) != resp.ContentLength {
		resp.ContentLength = int64(len(mb.b))
		resp.Header.Set("Content-Length", strconv.Itoa(len(mb.b)))
	}
	return nil
}

// redactMessage redacts an error message that may quote the upstream's
// bytes (a malformed header line) before the sandbox or the audit log sees
// it.
func (rs *reqState) redactMessage(msg string) string {
	if rs.secrets != nil {
		msg, _ = rs.secrets.ps.string(msg)
	}
	return msg
}

// filterTrailer redacts resp's trailers (read once the body has ended).
func (rs *reqState) filterTrailer(resp *http.Response) {
	if where := rs.secrets.header(resp.Trailer); where != "" {
		rs.ci.s.secretEvent(rs, "injected secret echoed in response trailer "+where)
	}
}

// filterInformational redacts the header of a 1xx informational answer
// (103 Early Hints) before it is relayed.
func (rs *reqState) filterInformational(h http.Header) {
	if rs.secrets == nil {
		return
	}
	if where := rs.secrets.header(h); where != "" {
		rs.ci.s.secretEvent(rs, "injected secret echoed in informational response header "+where)
	}
}

// filterInformationalResponse redacts a 1xx answer the HTTP/1.x loop
// relays: header and reason phrase.
func (rs *reqState) filterInformationalResponse(resp *http.Response) {
	if rs.secrets == nil {
		return
	}
	rs.filterInformational(resp.Header)
	rs.filterStatus(resp)
}

// filterStatus redacts the reason phrase of resp's status line (HTTP/1.x
// relays it; HTTP/2 has none).
func (rs *reqState) filterStatus(resp *http.Response) {
	if s, hit := rs.secrets.ps.string(resp.Status); hit {
		resp.Status = s
		rs.ci.s.secretEvent(rs, "injected secret echoed in the response status line")
	}
}

// filterUpgrade checks a WebSocket the upstream switched to (only the
// HTTP/1.x loop upgrades; it reads the frames through upgradeReader).
func (rs *reqState) filterUpgrade(resp *http.Response) error {
	if ext := resp.Header.Get("Sec-Websocket-Extensions"); ext != "" {
		return fmt.Errorf("the upstream switched to WebSocket with extension %q, whose frames sluice cannot redact", ext)
	}
	return nil
}

// upgradeReader is what the sandbox reads of an upgraded connection whose
// upstream side is src: the frames with secrets redacted.
func (rs *reqState) upgradeReader(src io.Reader) io.Reader {
	if rs.secrets == nil {
		return src
	}
	return newWSFilter(src, rs.secrets.ps, func() {
		rs.ci.s.secretEvent(rs, "injected secret echoed in a WebSocket frame")
	})
}

// decodeBody replaces a content-coded body by its decoded form (forwarded
// with the codings removed). It reports whether it did; an unknown coding
// is an error.
func decodeBody(resp *http.Response) (bool, error) {
	var codings []string
	for _, v := range resp.Header["Content-Encoding"] {
		for c := range strings.SplitSeq(v, ",") {
			c = strings.ToLower(textproto.TrimString(c))
			switch c {
			case "", "identity":
			case "gzip", "x-gzip", "deflate", "br", "zstd":
				codings = append(codings, c)
			default:
				return false, fmt.Errorf("response with Content-Encoding %q, which sluice cannot decode to redact it", c)
			}
		}
	}
	if len(codings) == 0 {
		if len(resp.Header["Content-Encoding"]) > 0 {
			resp.Header.Del("Content-Encoding")
		}
		return false, nil
	}
	db := &decodedBody{body: resp.Body}
	var r io.Reader = resp.Body
	for i := len(codings) - 1; i >= 0; i-- { // applied in order: undone last first
		r = &lazyDecoder{src: r, coding: codings[i], db: db}
	}
	db.r = r
	resp.Body = db
	resp.Header.Del("Content-Encoding")
	resp.Header.Del("Content-Length")
	resp.ContentLength = -1
	resp.Uncompressed = true
	// The representation changed: a strong validator no longer holds.
	if et := resp.Header.Get("Etag"); et != "" && !strings.HasPrefix(et, "W/") {
		resp.Header.Set("Etag", "W/"+et)
	}
	return true, nil
}

// decodedBody is a response body read through its decoders.
type decodedBody struct {
	body    io.ReadCloser
	r       io.Reader
	closers []func()
}

func (d *decodedBody) Read(p []byte) (int, error) { return d.r.Read(p) }

func (d *decodedBody) Close() error {
	for _, c := range d.closers {
		c()
	}
	d.closers = nil
	return d.body.Close()
}

// maxZstdWindow bounds the memory of a zstd decoder (RFC 9659 lets HTTP
// recipients refuse windows over 8 MiB).
const maxZstdWindow = 8 << 20

// lazyDecoder starts its decoder on the first read, so that reading the
// coding's header does not hold up the response head.
type lazyDecoder struct {
	src    io.Reader
	coding string
	db     *decodedBody
	r      io.Reader
	err    error
}

func (l *lazyDecoder) Read(p []byte) (int, error) {
	if l.r == nil && l.err == nil {
		l.r, l.err = l.start()
		if l.err != nil {
			l.err = fmt.Errorf("decoding %s response body: %w", l.coding, l.err)
		}
	}
	if l.err != nil {
		return 0, l.err
	}
	n, err := l.r.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("decoding %s response body: %w", l.coding, err)
	}
	return n, err
}

func (l *lazyDecoder) start() (io.Reader, error) {
	switch l.coding {
	case "gzip", "x-gzip":
		return gzip.NewReader(l.src)
	case "deflate":
		// "deflate" is zlib (RFC 9110 8.4.1.2); some servers send raw
		// deflate instead.
		br := bufio.NewReader(l.src)
		if b, err := br.Peek(2); err == nil && b[0]&0x0f == 8 && (uint16(b[0])<<8|uint16(b[1]))%31 == 0 {
			return zlib.NewReader(br)
		}
		fr := flate.NewReader(br)
		l.db.closers = append(l.db.closers, func() { fr.Close() })
		return fr, nil
	case "br":
		return brotli.NewReader(l.src), nil
	case "zstd":
		d, err := zstd.NewReader(l.src, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxWindow(maxZstdWindow))
		if err != nil {
			return nil, err
		}
		l.db.closers = append(l.db.closers, d.Close)
		return d, nil
	}
	return nil, errors.New("unknown coding")
}

// memBody is a response body held in memory. Bodies of 1 to 32 KiB use a
// pooled buffer, returned on Close.
type memBody struct {
	b      []byte
	off    int
	pooled *[32 << 10]byte
}

func newMemBody(n int64) *memBody {
	if n <= 1<<10 {
		return &memBody{b: make([]byte, 0, n)} // cheaper than a pooled 32 KiB
	}
	if n <= 32<<10 {
		p := copyBufs.Get().(*[32 << 10]byte)
		return &memBody{b: p[:0], pooled: p}
	}
	return &memBody{b: make([]byte, 0, n)}
}

func (m *memBody) Read(p []byte) (int, error) {
	if m.off >= len(m.b) {
		return 0, io.EOF
	}
	n := copy(p, m.b[m.off:])
	m.off += n
	return n, nil
}

func (m *memBody) Close() error {
	if m.pooled != nil {
		copyBufs.Put(m.pooled)
	}
	m.b, m.off, m.pooled = nil, 0, nil
	return nil
}

// maxBufferedRedact is the largest known-length response body redacted in
// memory (keeping its Content-Length); larger ones are redacted streaming.
const maxBufferedRedact = 64 << 10

func readAtMost(r io.Reader, buf []byte, n int64) ([]byte, error) {
	for int64(len(buf)) < n {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		m, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	return buf, nil
}

// bodyEcho records an injected secret echoed in the response body.
func (rs *reqState) bodyEcho() {
	rs.ci.s.secretEvent(rs, "injected secret echoed in response body")
}

func (s *server) secretEvent(rs *reqState, reason string) {
	s.emit(audit.Event{
		Kind:     audit.KindSecret,
		CgroupID: rs.ci.orig.CgroupID,
		PID:      rs.ci.orig.PID,
		Comm:     rs.ci.orig.Comm,
		Decision: audit.DecisionDeny,
		Rule:     ruleName(rs.rule),
		Reason:   reason + "; redacted",
		Host:     rs.host,
		Path:     rs.path,
	})
}
