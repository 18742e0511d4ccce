package proxy

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"hash/maphash"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"
	"unsafe"
)

// Echo redaction. Every response path that reaches the sandbox (headers,
// bodies after content decoding, trailers, 1xx headers, WebSocket frames)
// goes through one redactor: it knows the secret values injected into the
// request and the patterns that reveal them, each value and its common
// encodings (patterns). A pattern found is replaced by Redacted (bodies,
// headers) or by a mask of the same length (WebSocket frames, whose lengths
// are kept). Streams stay streams: a reader passes data on as soon as it is
// read and holds back only a tail that could begin a pattern, so memory is
// bounded by the longest pattern and a value split across reads is caught.

// Redacted replaces an injected secret value echoed back by an upstream.
const Redacted = "[redacted by sluice]"

// minSecretLen: shorter values are not redacted (they would match ordinary
// text everywhere and say nothing about the secret).
const minSecretLen = 4

// minPatternLen: shorter encoded forms (parts of a base64 stream) are left
// alone for the same reason.
const minPatternLen = 4

// redactor knows the secret values injected into one request.
type redactor struct {
	ps *patternSet
}

func newRedactor(values []string) *redactor {
	r := new(redactor)
	if !r.init(values) {
		return nil
	}
	return r
}

// init sets r up for values; it reports whether any value is long enough to
// be redacted. Pattern sets are cached by the values they were built from,
// so a request whose credentials did not change builds nothing.
func (r *redactor) init(values []string) bool {
	r.ps = nil
	var h maphash.Hash
	h.SetSeed(patternSeed)
	n := 0
	for _, v := range values {
		if len(v) >= minSecretLen {
			n++
			h.WriteString(v)
			h.WriteByte(0)
		}
	}
	if n == 0 {
		return false
	}
	key := h.Sum64()
	if ps, ok := patternCache.Load(key); ok && ps.(*patternSet).built(values) {
		r.ps = ps.(*patternSet)
		return true
	}
	r.ps = newPatternSet(values)
	if patternCount.Add(1) > maxCachedPatternSets {
		patternCache.Clear()
		patternCount.Store(0)
	}
	patternCache.Store(key, r.ps)
	return true
}

// maxCachedPatternSets bounds the pattern cache (it is cleared when full).
const maxCachedPatternSets = 512

var (
	patternCache sync.Map // hash of the values → *patternSet
	patternCount atomic.Int64
	patternSeed  = maphash.MakeSeed()
)

// patternSet is the compiled set of patterns of some secret values; it is
// immutable and shared.
type patternSet struct {
	values  []string      // the values it was built from (those long enough)
	pats    []string      // every pattern, longest first
	byFirst [256][]string // patterns by first byte, longest first
	// pair has bit (b0<<8 | b1) set when some pattern starts with b0 b1,
	// inner when some pattern has b0 b1 at offset 0, 1 or 2.
	pair   [1 << 10]uint64
	inner  [1 << 10]uint64
	maxLen int
}

func newPatternSet(values []string) *patternSet {
	ps := new(patternSet)
	seen := map[string]bool{}
	for _, v := range values {
		if len(v) < minSecretLen {
			continue
		}
		ps.values = append(ps.values, v)
		for _, p := range encodings(v) {
			if len(p) >= minPatternLen && !seen[p] {
				seen[p] = true
				ps.pats = append(ps.pats, p)
			}
		}
	}
	slices.SortStableFunc(ps.pats, func(a, b string) int { return len(b) - len(a) })
	for _, p := range ps.pats {
		ps.byFirst[p[0]] = append(ps.byFirst[p[0]], p)
		x := uint16(p[0])<<8 | uint16(p[1])
		ps.pair[x>>6] |= 1 << (x & 63)
		for j := 0; j < 3; j++ {
			x := uint16(p[j])<<8 | uint16(p[j+1])
			ps.inner[x>>6] |= 1 << (x & 63)
		}
		ps.maxLen = max(ps.maxLen, len(p))
	}
	return ps
}

// built reports whether ps was built from values.
func (ps *patternSet) built(values []string) bool {
	i := 0
	for _, v := range values {
		if len(v) < minSecretLen {
			continue
		}
		if i == len(ps.values) || ps.values[i] != v {
			return false
		}
		i++
	}
	return i == len(ps.values)
}

// encodings lists v and the forms in which an upstream commonly echoes it:
// base64 (standard and URL alphabets, padded and not, and the part of a
// longer base64 stream that v determines at each of the three alignments),
// hex (lower and upper case), percent-encoding (query, path, strict RFC 3986
// and every byte, upper and lower case hex) and JSON string escaping
// (minimal, with \/, with < > & as \u00XX, and every character as \uXXXX).
func encodings(v string) []string {
	out := []string{v}
	b := []byte(v)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
		full := enc.EncodeToString(b)
		out = append(out, full, strings.TrimRight(full, "="))
		for k := 0; k < 3; k++ {
			out = append(out, base64Core(enc, b, k))
		}
	}
	h := hex.EncodeToString(b)
	out = append(out, h, strings.ToUpper(h))
	out = append(out, url.QueryEscape(v), url.PathEscape(v))
	for _, upper := range []bool{true, false} {
		out = append(out, percentEncode(v, upper, false), percentEncode(v, upper, true))
	}
	out = append(out, strings.ReplaceAll(url.QueryEscape(v), "+", "%20"))
	if mj, err := json.Marshal(v); err == nil {
		s := string(mj[1 : len(mj)-1])
		out = append(out, s, strings.ReplaceAll(s, "/", `\/`))
	}
	js := jsonEscape(v, false, false)
	out = append(out, js, strings.ReplaceAll(js, "/", `\/`), jsonEscape(v, true, false), jsonEscape(v, true, true))
	return out
}

// base64Core is the part of the base64 encoding of a stream holding v after
// k (mod 3) other bytes that v alone determines.
func base64Core(enc *base64.Encoding, v []byte, k int) string {
	s := enc.EncodeToString(append(make([]byte, k), v...))
	first := (8*k + 5) / 6       // characters touching the k bytes before v
	last := 8 * (k + len(v)) / 6 // characters wholly inside the stream
	if first >= last {
		return ""
	}
	return s[first:last]
}

// percentEncode escapes every byte (all) or every byte but the unreserved
// ones of RFC 3986.
func percentEncode(v string, upper, all bool) string {
	digits := "0123456789ABCDEF"
	if !upper {
		digits = "0123456789abcdef"
	}
	var sb strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !all && (c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~') {
			sb.WriteByte(c)
			continue
		}
		sb.WriteByte('%')
		sb.WriteByte(digits[c>>4])
		sb.WriteByte(digits[c&15])
	}
	return sb.String()
}

// jsonEscape is v as the inside of a JSON string: minimally escaped, or
// (all) every character as \uXXXX (UTF-16 surrogate pairs beyond the BMP),
// in lower or upper case hex.
func jsonEscape(v string, all, upper bool) string {
	digits := "0123456789abcdef"
	if upper {
		digits = "0123456789ABCDEF"
	}
	var sb strings.Builder
	u := func(r rune) {
		sb.WriteString(`\u`)
		sb.WriteByte(digits[r>>12&15])
		sb.WriteByte(digits[r>>8&15])
		sb.WriteByte(digits[r>>4&15])
		sb.WriteByte(digits[r&15])
	}
	for _, r := range v {
		switch {
		case all && r > 0xffff:
			r -= 0x10000
			u(0xd800 + r>>10)
			u(0xdc00 + r&0x3ff)
		case all:
			u(r)
		case r == '"' || r == '\\':
			sb.WriteByte('\\')
			sb.WriteRune(r)
		case r == '\n':
			sb.WriteString(`\n`)
		case r == '\r':
			sb.WriteString(`\r`)
		case r == '\t':
			sb.WriteString(`\t`)
		case r < 0x20 || r == utf8.RuneError:
			u(r)
		default:
			sb.WriteRune(r)
		}
	}
	return sb.String()
}

// next finds the leftmost pattern in src at or after from: at is its
// position and n its length (the longest pattern there). pending reports
// instead that src[at:] is a proper prefix of a pattern longer than any
// found there, so the answer depends on the bytes that follow (never when
// final). With no pattern, at is len(src).
//
// Every pattern is at least minPatternLen (4) bytes long, so one that
// starts at q holds the byte pairs at q, q+1 and q+2: probing every third
// pair against ps.inner (the pairs at offsets 0 to 2 of every pattern)
// finds every candidate start, and a probe that misses clears three.
//
//go:norace
func (ps *patternSet) next(src []byte, from int, final bool) (at, n int, pending bool) {
	i := from + 2
	for ; i+1 < len(src); i += 3 {
		x := uint16(src[i])<<8 | uint16(src[i+1])
		if ps.inner[x>>6]&(1<<(x&63)) == 0 {
			continue
		}
		for q := i - 2; q <= i; q++ {
			if at, n, pending := ps.start(src, q, final); n > 0 || pending {
				return at, n, pending
			}
		}
	}
	for q := max(from, i-2); q < len(src); q++ {
		if at, n, pending := ps.start(src, q, final); n > 0 || pending {
			return at, n, pending
		}
	}
	return len(src), 0, false
}

// start checks for a pattern (or the beginning of one) at src[q:].
func (ps *patternSet) start(src []byte, q int, final bool) (int, int, bool) {
	if q+1 < len(src) {
		x := uint16(src[q])<<8 | uint16(src[q+1])
		if ps.pair[x>>6]&(1<<(x&63)) == 0 {
			return q, 0, false
		}
		n, pending := ps.at(src[q:], final)
		return q, n, pending
	}
	return q, 0, !final && len(ps.byFirst[src[q]]) > 0
}

// at reports the longest pattern at the start of rest, or that rest is a
// proper prefix of a longer one.
func (ps *patternSet) at(rest []byte, final bool) (int, bool) {
	for _, p := range ps.byFirst[rest[0]] {
		if len(rest) >= len(p) {
			if string(rest[:len(p)]) == p {
				return len(p), false
			}
		} else if !final && string(rest) == p[:len(rest)] {
			return 0, true
		}
	}
	return 0, false
}

// redact appends src to dst with every pattern replaced, by Redacted or
// (fixed) by a mask of the same length. It decides src[:k] and returns k:
// src[k:] may begin a pattern and waits for more input (never when final).
// hit reports whether anything was replaced.
func (ps *patternSet) redact(dst, src []byte, final, fixed bool) (out []byte, k int, hit bool) {
	for i := 0; ; {
		at, n, pending := ps.next(src, i, final)
		dst = append(dst, src[i:at]...)
		if n == 0 {
			if pending {
				return dst, at, hit
			}
			return dst, len(src), hit
		}
		hit = true
		if fixed {
			dst = appendMask(dst, n)
		} else {
			dst = append(dst, Redacted...)
		}
		i = at + n
	}
}

// appendMask appends the same-length replacement of an n-byte secret:
// Redacted padded with '*', or '*'s when shorter.
func appendMask(dst []byte, n int) []byte {
	if n >= len(Redacted) {
		dst = append(dst, Redacted...)
		n -= len(Redacted)
	}
	for ; n > 0; n-- {
		dst = append(dst, '*')
	}
	return dst
}

// bytesOf views s as bytes without copying; the result must never be
// written to.
func bytesOf(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

// string redacts a complete value.
func (ps *patternSet) string(v string) (string, bool) {
	if len(v) < minPatternLen {
		return v, false
	}
	if at, _, _ := ps.next(bytesOf(v), 0, true); at == len(v) {
		return v, false
	}
	out, _, _ := ps.redact(nil, []byte(v), true, false)
	return string(out), true
}

// header redacts h in place and returns the name of the first header that
// held a secret ("" if none).
func (r *redactor) header(h http.Header) string {
	where := ""
	for k, vs := range h {
		for i, v := range vs {
			if nv, hit := r.ps.string(v); hit {
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
	out, _, hit := r.ps.redact(dst, src, true, false)
	return out, hit
}

// reader wraps a response body. It passes data through as soon as it is
// read (streaming is preserved), holding back only a tail that could begin a
// secret until the next read decides it; onHit runs once on the first
// redaction. When resp is set, its trailers (read by then) are filtered
// for rs when the body ends, before the reader returns io.EOF.
func (r *redactor) reader(body io.ReadCloser, onHit func()) *redactReader {
	return &redactReader{body: body, ps: r.ps, onHit: onHit}
}

type redactReader struct {
	body  io.ReadCloser
	ps    *patternSet
	onHit func()
	hit   bool
	rs    *reqState
	resp  *http.Response

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
				rr.decide(true)
				continue
			}
			if rr.resp != nil && rr.err == io.EOF {
				rr.rs.filterTrailer(rr.resp)
				rr.resp = nil
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
		rr.decide(false)
	}
	n := copy(p, rr.out[rr.off:])
	rr.off += n
	return n, nil
}

// decide redacts what it can of the input; the undecided tail stays in
// rr.in.
func (rr *redactReader) decide(final bool) {
	var hit bool
	var k int
	rr.out, k, hit = rr.ps.redact(rr.out[:0], rr.in, final, false)
	rr.off = 0
	rr.in = append(rr.in[:0], rr.in[k:]...)
	if hit && !rr.hit {
		rr.hit = true
		if rr.onHit != nil {
			rr.onHit()
		}
	}
}

func (rr *redactReader) Close() error { return rr.body.Close() }
