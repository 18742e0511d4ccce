package proxy

import (
	"bytes"
	"io"
	"net/http"
	"slices"
	"strings"
	"unsafe"
)

// Redacted replaces an injected secret value echoed back by an upstream.
const Redacted = "[redacted by sluice]"

// minSecretLen: shorter values are not redacted (they would match ordinary
// text everywhere and say nothing about the secret).
const minSecretLen = 4

// redactor knows the secret values injected into one request.
type redactor struct {
	secrets []string // longest first
	maxLen  int
	buf     [4]string
}

func newRedactor(values []string) *redactor {
	r := new(redactor)
	if !r.init(values) {
		return nil
	}
	return r
}

// init sets r up for values (without copying them); it reports whether any
// value is long enough to be redacted.
func (r *redactor) init(values []string) bool {
	r.secrets, r.maxLen = r.buf[:0], 0
	for _, v := range values {
		if len(v) < minSecretLen || slices.Contains(r.secrets, v) {
			continue
		}
		r.secrets = append(r.secrets, v)
		r.maxLen = max(r.maxLen, len(v))
	}
	if len(r.secrets) == 0 {
		return false
	}
	if len(r.secrets) > 1 {
		slices.SortFunc(r.secrets, func(a, b string) int { return len(b) - len(a) })
	}
	return true
}

// bytesOf views s as bytes without copying; the result must never be
// written to.
func bytesOf(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

// header redacts h in place and returns the name of the first header that
// held a secret ("" if none).
func (r *redactor) header(h http.Header) string {
	where := ""
	for k, vs := range h {
		for i, v := range vs {
			nv := v
			for _, s := range r.secrets {
				if strings.Contains(nv, s) {
					nv = strings.ReplaceAll(nv, s, Redacted)
				}
			}
			if nv != v {
				vs[i] = nv
				if where == "" {
					where = k
				}
			}
		}
	}
	return where
}

// replace copies src to dst with every complete secret replaced; it returns
// the extended dst and whether anything was replaced.
func (r *redactor) replace(dst, src []byte) ([]byte, bool) {
	hit := false
	for len(src) > 0 {
		at, n := -1, 0
		for _, s := range r.secrets {
			if i := bytes.Index(src, bytesOf(s)); i >= 0 && (at < 0 || i < at) {
				at, n = i, len(s)
			}
		}
		if at < 0 {
			dst = append(dst, src...)
			break
		}
		hit = true
		dst = append(dst, src[:at]...)
		dst = append(dst, Redacted...)
		src = src[at+n:]
	}
	return dst, hit
}

// heldTail is the length of the longest suffix of b that is a proper prefix
// of a secret: those bytes may be the start of a secret split across reads.
func (r *redactor) heldTail(b []byte) int {
	for k := min(len(b), r.maxLen-1); k > 0; k-- {
		tail := b[len(b)-k:]
		for _, s := range r.secrets {
			if len(s) > k && bytes.HasPrefix(bytesOf(s), tail) {
				return k
			}
		}
	}
	return 0
}

// reader wraps a response body. It passes data through as soon as it is
// read (streaming is preserved), holding back only a tail that could begin a
// secret until the next read decides it; onHit runs once on the first
// redaction.
func (r *redactor) reader(body io.ReadCloser, onHit func()) io.ReadCloser {
	return &redactReader{body: body, r: r, onHit: onHit}
}

type redactReader struct {
	body  io.ReadCloser
	r     *redactor
	onHit func()
	hit   bool

	in   []byte // held tail + new data
	out  []byte // redacted, ready to return
	off  int
	rbuf []byte
	err  error
}

func (rr *redactReader) Read(p []byte) (int, error) {
	for rr.off == len(rr.out) {
		if rr.err != nil {
			if len(rr.in) > 0 { // the stream ended inside a possible prefix
				rr.out = append(rr.out[:0], rr.in...)
				rr.off, rr.in = 0, rr.in[:0]
				break
			}
			return 0, rr.err
		}
		if rr.rbuf == nil {
			rr.rbuf = make([]byte, 32<<10)
		}
		n, err := rr.body.Read(rr.rbuf)
		rr.err = err
		if n == 0 {
			continue
		}
		rr.in = append(rr.in, rr.rbuf[:n]...)
		var hit bool
		rr.out, hit = rr.r.replace(rr.out[:0], rr.in)
		rr.off = 0
		if hit && !rr.hit {
			rr.hit = true
			rr.onHit()
		}
		// Hold back a tail of the *input* that may begin a secret. Replacement
		// only ever happens on complete secrets, so the output ends with the
		// same bytes as the input whenever the input's tail is unreplaced.
		hold := rr.r.heldTail(rr.in)
		if hold > 0 && rr.err == nil && len(rr.out) >= hold && bytes.Equal(rr.out[len(rr.out)-hold:], rr.in[len(rr.in)-hold:]) {
			rr.out = rr.out[:len(rr.out)-hold]
			rr.in = append(rr.in[:0], rr.in[len(rr.in)-hold:]...)
		} else {
			rr.in = rr.in[:0]
		}
	}
	n := copy(p, rr.out[rr.off:])
	rr.off += n
	return n, nil
}

func (rr *redactReader) Close() error { return rr.body.Close() }
