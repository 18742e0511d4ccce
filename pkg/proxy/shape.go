package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/policy"
)

// Request shaping (a rule's request: section) on both the HTTP/1.x loop and
// the HTTP/2 path. One request's body goes through:
//
//  1. max_body against Content-Length, before a byte is read (413);
//  2. a prebuffer of up to policy.PrebufferBody (or max_body+1 when
//     smaller): a body that ends within it is checked whole (max_body,
//     deny_body, json) and redacted in memory, so a refusal reaches the
//     upstream as nothing at all, the Content-Length is recomputed, and
//     the client's body digests are dropped if redaction changed it;
//  3. otherwise a streaming reader (shapeReader) with bounded memory: it
//     counts bytes, scans for deny_body matches over a window that keeps
//     the last policy.MaxMatchLen bytes, validates JSON incrementally and
//     redacts with the same window, holding the tail of the body back
//     until the checks that need the end have passed. A violation then
//     fails the body read: the upstream connection is dropped before the
//     request is complete (a Content-Length body is short, a chunked one
//     lacks its last chunk), and the client gets the refusal. A
//     rewriting rule drops the client's body digests here too.
//
// In audit mode a violation is recorded (would_deny) and the body is
// forwarded unchanged apart from redaction, which applies in both modes.

// shapeError is a request refused by its rule's request: section.
type shapeError struct {
	code   int
	reason string
}

func (e *shapeError) Error() string { return e.reason }

// bodyShape is the shaping state of one request.
type bodyShape struct {
	q       *policy.RequestShaping
	rule    string
	audited bool
	// counts of replaced matches, per redaction (read by finish while a
	// transport goroutine may still be reading the body).
	counts []atomic.Int64
	// violation is the first refusal found (also in audit mode).
	violation atomic.Pointer[shapeError]
	// reader is the streaming reader, nil when the body was prebuffered.
	reader *shapeReader
}

func (b *bodyShape) fail(code int, format string, args ...any) *shapeError {
	e := &shapeError{code: code, reason: fmt.Sprintf(format, args...)}
	b.violation.CompareAndSwap(nil, e)
	return e
}

// shapeRequest applies the request: section of rs.rule to r's body. A
// non-zero code refuses the request locally with code and body (nothing
// was forwarded). Otherwise r.Body (and r.ContentLength) may have been
// replaced. gate calls it after checkRequest allowed the request and
// before any credential is resolved.
func (s *server) shapeRequest(r *http.Request, rs *reqState) (int, string) {
	if rs.rule == nil || rs.rule.Request == nil || r.Body == nil || r.Body == http.NoBody {
		return 0, ""
	}
	q := rs.rule.Request
	pol := s.sb.Policy()
	sh := &bodyShape{q: q, rule: rs.rule.Name, audited: pol != nil && pol.Mode == policy.ModeAudit, counts: make([]atomic.Int64, len(q.Redact))}
	rs.shape = sh
	wantJSON := q.JSON && isJSONType(r.Header.Get("Content-Type"))

	refuse := func(e *shapeError) (int, string) {
		if sh.audited {
			return 0, ""
		}
		return s.shapeRefusal(r, rs, e)
	}
	if q.MaxBody > 0 && r.ContentLength > q.MaxBody {
		if c, b := refuse(sh.fail(http.StatusRequestEntityTooLarge, "body of %d bytes exceeds max_body %d of rule %s", r.ContentLength, q.MaxBody, sh.rule)); c != 0 {
			return c, b
		}
	}

	// Prebuffer: the whole body when it is small enough.
	limit := int64(policy.PrebufferBody)
	if q.MaxBody > 0 && q.MaxBody < limit {
		limit = q.MaxBody
	}
	var pre []byte
	complete := false
	if r.ContentLength < 0 || r.ContentLength <= limit {
		var err error
		pre, complete, err = readUpTo(r.Body, limit+1)
		if err != nil {
			// The client's body failed: let the forwarder report it.
			r.Body = &shapedBody{Reader: io.MultiReader(bytes.NewReader(pre), errReader{err}), orig: r.Body}
			return 0, ""
		}
	}
	if q.MaxBody > 0 && int64(len(pre)) > q.MaxBody {
		// Past max_body within the prebuffer: nothing was forwarded.
		if c, b := refuse(sh.fail(http.StatusRequestEntityTooLarge, "body exceeds max_body %d of rule %s", q.MaxBody, sh.rule)); c != 0 {
			return c, b
		}
	}
	if complete {
		for i, re := range q.DenyBody {
			if matches(re, pre) {
				if c, b := refuse(sh.fail(http.StatusForbidden, "body matches deny_body[%d] of rule %s", i, sh.rule)); c != 0 {
					return c, b
				}
				break
			}
		}
		if wantJSON && len(pre) > 0 && !json.Valid(pre) {
			if c, b := refuse(sh.fail(http.StatusBadRequest, "body is not valid JSON (rule %s requires JSON for Content-Type %s)", sh.rule, r.Header.Get("Content-Type"))); c != 0 {
				return c, b
			}
		}
		changed := false
		for i, red := range q.Redact {
			var n int
			pre, n = replaceAll(red, pre)
			sh.counts[i].Add(int64(n))
			changed = changed || n > 0
		}
		if changed {
			dropBodyDigests(r.Header)
		}
		if len(pre) == 0 {
			r.Body.Close()
			r.Body = http.NoBody // an empty body stays one (no chunked GET upstream)
		} else {
			r.Body = &shapedBody{Reader: bytes.NewReader(pre), orig: r.Body, whole: pre}
		}
		r.ContentLength = int64(len(pre))
		r.TransferEncoding = nil
		r.Header.Del("Content-Length")
		return 0, ""
	}
	sr := newShapeReader(sh, io.MultiReader(bytes.NewReader(pre), r.Body), wantJSON)
	sh.reader = sr
	r.Body = &shapedBody{Reader: sr, orig: r.Body, close: sr.close}
	if q.Rewrites() {
		r.ContentLength = -1 // chunked: the length changes with redaction
		r.Header.Del("Content-Length")
		dropBodyDigests(r.Header) // the body may change after the head is sent
	}
	return 0, ""
}

// dropBodyDigests removes the client's digests of a body that redaction
// changed (or may change while it streams): forwarded, they would make the
// upstream refuse the request (S3's BadDigest), and aws_sigv4 would sign
// them.
func dropBodyDigests(h http.Header) {
	for _, k := range []string{"Content-MD5", "Digest", "Content-Digest", "Repr-Digest"} {
		h.Del(k)
	}
}

// shapeRefusal records a local refusal of the request and returns the
// answer for the client.
func (s *server) shapeRefusal(r *http.Request, rs *reqState, e *shapeError) (int, string) {
	rs.decision = audit.DecisionDeny
	rs.ev.Reason = e.reason
	rs.status = e.code
	return e.code, refusalBody(r, rs.host, e.reason)
}

// shapeFailed turns a body read that failed because of shaping (found while
// streaming) into the refusal for the client; ok is false for any other
// error.
func (s *server) shapeFailed(r *http.Request, rs *reqState, err error) (code int, body string, ok bool) {
	if rs.shape == nil || err == nil {
		return 0, "", false
	}
	var se *shapeError // escapes: declared after the common case returns
	if !errors.As(err, &se) {
		// A transport may wrap or replace the body's error: the
		// violation recorded while streaming still decides.
		if se = rs.shape.violation.Load(); se == nil || rs.shape.audited {
			return 0, "", false
		}
	}
	code, body = s.shapeRefusal(r, rs, se)
	return code, body, true
}

// shapeEvent completes a request's event with what shaping did: the
// redaction counts, and a violation recorded in audit mode. The request is
// over: a streaming check still waiting for the body is stopped.
func (rs *reqState) shapeEvent(ev *audit.Event) {
	sh := rs.shape
	if sh == nil {
		return
	}
	if sh.reader != nil {
		sh.reader.close()
	}
	for i := range sh.counts {
		if n := sh.counts[i].Load(); n > 0 {
			if ev.Redacted == nil {
				ev.Redacted = map[string]int{}
			}
			ev.Redacted[sh.q.Redact[i].Pattern.String()] += int(n)
		}
	}
	if e := sh.violation.Load(); e != nil && sh.audited && ev.Decision == audit.DecisionAllow {
		ev.Decision = audit.DecisionWouldDeny
		ev.Reason = e.reason
		ev.Rule = sh.rule
	}
}

// isJSONType reports whether a Content-Type says JSON: application/json,
// text/json or any */*+json.
func isJSONType(ct string) bool {
	if ct == "" {
		return false
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		mt = strings.ToLower(strings.TrimSpace(strings.SplitN(ct, ";", 2)[0]))
	}
	return mt == "application/json" || mt == "text/json" || strings.HasSuffix(mt, "+json")
}

// readUpTo reads until EOF or n bytes; complete is true at EOF.
func readUpTo(r io.Reader, n int64) (b []byte, complete bool, err error) {
	var buf bytes.Buffer
	m, err := buf.ReadFrom(io.LimitReader(r, n))
	if err != nil {
		return buf.Bytes(), false, err
	}
	return buf.Bytes(), m < n, nil
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// shapedBody is a shaped request body; Close closes the client's body.
type shapedBody struct {
	io.Reader
	orig  io.Closer
	close func()
	once  sync.Once
	// whole is the entire shaped body when it was checked in memory
	// (unread yet: Reader reads it), for aws_sigv4 to hash.
	whole []byte
}

func (b *shapedBody) Close() error {
	b.once.Do(func() {
		if b.close != nil {
			b.close()
		}
	})
	return b.orig.Close()
}

// replaceAll replaces every match of red in src (leftmost-first, not
// overlapping, with as literal text) and counts them.
func replaceAll(red policy.Redaction, src []byte) ([]byte, int) {
	locs := findAll(red.Pattern, src, 0, false)
	if len(locs) == 0 {
		return src, 0
	}
	out := make([]byte, 0, len(src))
	last := 0
	for _, l := range locs {
		out = append(out, src[last:l[0]]...)
		out = append(out, red.With...)
		last = l[1]
	}
	return append(out, src[last:]...), len(locs)
}

// window is MaxMatchLen plus one byte: a match's decision may look at the
// byte after it (\b, $).
const window = policy.MaxMatchLen + 1

// redactStage is one redact_body pattern applied to a stream: it keeps the
// last window bytes back until it has seen the bytes after them, so a
// match of up to MaxMatchLen bytes split across reads is replaced whole.
type redactStage struct {
	red   policy.Redaction
	count *atomic.Int64
	pend  []byte
	prev  byte // the byte before pend in the stream (context for \b)
	has   bool // prev is set
	out   []byte
}

// push adds data and returns what may be forwarded (valid until the next
// call). At eof everything left is returned.
func (st *redactStage) push(data []byte, eof bool) []byte {
	st.pend = append(st.pend, data...)
	buf := st.pend
	safe := len(buf) - window
	if eof {
		safe = len(buf)
	}
	if safe <= 0 {
		return nil
	}
	locs := findAll(st.red.Pattern, buf, st.prev, st.has)
	out := st.out[:0]
	last := 0
	for _, l := range locs {
		if l[0] >= safe {
			break
		}
		out = append(out, buf[last:l[0]]...)
		out = append(out, st.red.With...)
		st.count.Add(1)
		last = l[1]
	}
	cut := max(safe, last)
	out = append(out, buf[last:cut]...)
	if cut > 0 {
		st.prev, st.has = buf[cut-1], true
	}
	st.pend = st.pend[:copy(st.pend, buf[cut:])]
	st.out = out
	return out
}

// shapeReader is the streaming form of request shaping (see the top of
// this file). Its memory is bounded: one read buffer, and per stage the
// window plus one read.
type shapeReader struct {
	sh     *bodyShape
	src    io.Reader
	n      int64
	tail   []byte // the last window bytes of the raw body (deny_body)
	stages []*redactStage
	json   *jsonCheck
	held   *redactStage // hold-back buffer without redaction stages
	buf    []byte
	out    []byte // ready for the consumer
	eof    bool
	err    error
}

func newShapeReader(sh *bodyShape, src io.Reader, wantJSON bool) *shapeReader {
	r := &shapeReader{sh: sh, src: src, buf: make([]byte, 32<<10)}
	for i, red := range sh.q.Redact {
		r.stages = append(r.stages, &redactStage{red: red, count: &sh.counts[i]})
	}
	if wantJSON {
		r.json = newJSONCheck()
	}
	return r
}

func (r *shapeReader) close() {
	if r.json != nil {
		r.json.abort()
	}
}

func (r *shapeReader) Read(p []byte) (int, error) {
	for len(r.out) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.eof {
			return 0, io.EOF
		}
		r.fill()
	}
	n := copy(p, r.out)
	r.out = r.out[n:]
	return n, nil
}

// violation records e; in enforce mode it ends the stream with e.
func (r *shapeReader) violation(e *shapeError) bool {
	if r.sh.audited {
		return false
	}
	r.err, r.out = e, nil
	r.close()
	return true
}

// fill reads once from the source and runs the checks and stages.
func (r *shapeReader) fill() {
	q := r.sh.q
	n, err := r.src.Read(r.buf)
	data := r.buf[:n]
	if err != nil && err != io.EOF {
		r.err = err
		r.close()
		return
	}
	eof := err == io.EOF
	r.n += int64(n)
	if q.MaxBody > 0 && r.n > q.MaxBody && r.sh.violation.Load() == nil {
		if r.violation(r.sh.fail(http.StatusRequestEntityTooLarge, "body exceeds max_body %d of rule %s", q.MaxBody, r.sh.rule)) {
			return
		}
	}
	if len(q.DenyBody) > 0 && n > 0 && r.sh.violation.Load() == nil {
		r.tail = append(r.tail, data...)
		for i, re := range q.DenyBody {
			if matches(re, r.tail) {
				if r.violation(r.sh.fail(http.StatusForbidden, "body matches deny_body[%d] of rule %s", i, r.sh.rule)) {
					return
				}
				break
			}
		}
		if len(r.tail) > window {
			r.tail = r.tail[:copy(r.tail, r.tail[len(r.tail)-window:])]
		}
	}
	if r.json != nil {
		if n > 0 {
			r.json.write(data)
		}
		if eof && !r.json.finish() && r.sh.violation.Load() == nil {
			if r.violation(r.sh.fail(http.StatusBadRequest, "body is not valid JSON (rule %s requires JSON)", r.sh.rule)) {
				return
			}
		}
	}
	out := data
	for _, st := range r.stages {
		out = st.push(out, eof)
	}
	if len(r.stages) == 0 && len(q.DenyBody)+btoi(r.json != nil) > 0 {
		// Hold the last window bytes back until the end is checked: a
		// Content-Length body must not complete upstream before that.
		out = r.holdBack(out, eof)
	}
	r.out = out
	r.eof = eof
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// holdBack keeps the last window bytes of the stream until eof.
func (r *shapeReader) holdBack(data []byte, eof bool) []byte {
	st := r.hold()
	st.pend = append(st.pend, data...)
	if eof {
		out := append(st.out[:0], st.pend...)
		st.pend = st.pend[:0]
		st.out = out
		return out
	}
	cut := len(st.pend) - window
	if cut <= 0 {
		return nil
	}
	out := append(st.out[:0], st.pend[:cut]...)
	st.pend = st.pend[:copy(st.pend, st.pend[cut:])]
	st.out = out
	return out
}

// hold returns the hold-back buffer of r.
func (r *shapeReader) hold() *redactStage {
	if r.held == nil {
		r.held = &redactStage{}
	}
	return r.held
}

// jsonCheck validates a JSON body incrementally: the bytes are fed to a
// json.Decoder in a goroutine through a pipe (one token at a time, so
// memory stays bounded by the longest string or number).
type jsonCheck struct {
	pw   *io.PipeWriter
	done chan bool
}

func newJSONCheck() *jsonCheck {
	pr, pw := io.Pipe()
	c := &jsonCheck{pw: pw, done: make(chan bool, 1)}
	go func() {
		dec := json.NewDecoder(pr)
		depth, values := 0, 0
		ok := true
		for {
			tok, err := dec.Token()
			if err == io.EOF {
				break
			}
			if err != nil {
				ok = false
				break
			}
			switch t := tok.(type) {
			case json.Delim:
				if t == '{' || t == '[' {
					depth++
				} else {
					depth--
					if depth == 0 {
						values++
					}
				}
			default:
				if depth == 0 {
					values++
				}
			}
		}
		pr.CloseWithError(errors.New("json check done"))
		c.done <- ok && depth == 0 && values == 1
	}()
	return c
}

func (c *jsonCheck) write(b []byte) { c.pw.Write(b) }

// finish ends the input and reports whether it was one JSON value.
func (c *jsonCheck) finish() bool {
	c.pw.Close()
	return <-c.done
}

func (c *jsonCheck) abort() { c.pw.CloseWithError(errors.New("aborted")) }
