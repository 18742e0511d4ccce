package dnsproxy

import (
	"encoding/binary"
	"sync"
	"time"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/policy"
)

// The UDP fast path answers repeated queries from a prebuilt wire answer:
// the first answer to (name, type, EDNS or not) is kept per sandbox as a
// template, and later identical queries get a copy with the client's id,
// flags and question spelling and with TTLs aged, without unpacking,
// consulting the policy or packing. A template is only used while
//   - the policy object is the one it was built under,
//   - the upstream answer it came from is live (its TTLs have not run out),
//   - the allowlist entries written for it still cover
//     now + max(TTL left, MinTTL) + Grace within refreshSlack (the slow
//     path itself skips rewrites within refreshSlack, so an entry may end
//     up to 2*refreshSlack sooner than computed; Grace absorbs that), and
//   - the sandbox's Bindings have released no address since,
// so a hit hands out exactly what the slow path would, and every hit still
// yields its audit event.

// maxTemplates bounds the fast path's templates per sandbox.
const maxTemplates = 4096

// staticLife bounds templates of answers that do not come from upstream
// (refusals, NODATA); policy changes invalidate them at once anyway.
const staticLife = time.Minute

type template struct {
	wire    []byte
	qnameAt int // end of the question name in wire
	ttlAt   []int
	ttl     []uint32
	built   time.Time
	expires time.Time
	// allowedUntil is the expiry written to the allowlist for the
	// answer's addresses; zero when the answer has none.
	allowedUntil time.Time
	minTTL       uint32 // smallest TTL of the address records
	pol          *policy.Policy
	gen          uint64
	ev           audit.Event
}

type templates struct {
	mu sync.RWMutex
	m  map[string]*template
}

func (ts *templates) get(key []byte) *template {
	ts.mu.RLock()
	t := ts.m[string(key)]
	ts.mu.RUnlock()
	return t
}

func (ts *templates) put(key []byte, t *template) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.m == nil {
		ts.m = make(map[string]*template)
	}
	if len(ts.m) >= maxTemplates {
		// Drop about an eighth, in map order (effectively random).
		n := maxTemplates / 8
		for k := range ts.m {
			delete(ts.m, k)
			if n--; n == 0 {
				break
			}
		}
	}
	ts.m[string(key)] = t
}

// query is what the fast path reads from a wire query.
type query struct {
	key     []byte // lower-case name, qtype, EDNS flag
	nameEnd int    // end of the question name
	size    int    // the client's UDP payload size
}

// parseQuery reads a plain query: one IN question with a host name, no
// answer or authority records, at most an OPT (version 0) in additional.
// Anything else returns false and takes the slow path.
func parseQuery(p []byte, key []byte) (query, bool) {
	q := query{key: key[:0], size: 512}
	if len(p) < 12+1+4 || p[2]&0xf8 != 0 { // QR and opcode
		return q, false
	}
	if binary.BigEndian.Uint16(p[4:]) != 1 || binary.BigEndian.Uint16(p[6:]) != 0 ||
		binary.BigEndian.Uint16(p[8:]) != 0 {
		return q, false
	}
	ar := binary.BigEndian.Uint16(p[10:])
	if ar > 1 {
		return q, false
	}
	i := 12
	for {
		if i >= len(p) {
			return q, false
		}
		l := int(p[i])
		if l == 0 {
			i++
			break
		}
		if l > 63 || i+1+l > len(p) {
			return q, false
		}
		for _, c := range p[i+1 : i+1+l] {
			switch {
			case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
			case c >= 'A' && c <= 'Z':
				c += 'a' - 'A'
			default:
				return q, false
			}
			q.key = append(q.key, c)
		}
		q.key = append(q.key, '.')
		i += 1 + l
	}
	if len(q.key) == 0 || len(q.key) > 254 {
		return q, false
	}
	q.nameEnd = i
	if i+4 > len(p) || binary.BigEndian.Uint16(p[i+2:]) != 1 { // class IN
		return q, false
	}
	q.key = append(q.key, p[i], p[i+1])
	i += 4
	if ar == 0 {
		q.key = append(q.key, 0)
		return q, i == len(p)
	}
	// OPT: root owner, type 41, class = payload size, TTL = ext rcode,
	// version, flags; rdata (options) ignored as the slow path does.
	if i+11 > len(p) || p[i] != 0 || binary.BigEndian.Uint16(p[i+1:]) != 41 || p[i+6] != 0 {
		return q, false
	}
	q.size = max(int(binary.BigEndian.Uint16(p[i+3:])), 512)
	rdlen := int(binary.BigEndian.Uint16(p[i+9:]))
	q.key = append(q.key, 1)
	return q, i+11+rdlen == len(p)
}

// ttlOffsets finds the TTL field of every record in a packed message.
func ttlOffsets(wire []byte) (at []int, ttl []uint32, ok bool) {
	if len(wire) < 12 {
		return nil, nil, false
	}
	counts := [4]int{}
	for s := range counts {
		counts[s] = int(binary.BigEndian.Uint16(wire[4+2*s:]))
	}
	i := 12
	skipName := func() bool {
		for i < len(wire) {
			l := int(wire[i])
			switch {
			case l == 0:
				i++
				return true
			case l&0xc0 == 0xc0:
				i += 2
				return i <= len(wire)
			case l > 63:
				return false
			default:
				i += 1 + l
			}
		}
		return false
	}
	for range counts[0] {
		if !skipName() || i+4 > len(wire) {
			return nil, nil, false
		}
		i += 4
	}
	for s := 1; s < 4; s++ {
		for range counts[s] {
			if !skipName() || i+10 > len(wire) {
				return nil, nil, false
			}
			typ := binary.BigEndian.Uint16(wire[i:])
			if typ != 41 { // OPT's TTL field is flags, not a TTL
				at = append(at, i+4)
				ttl = append(ttl, binary.BigEndian.Uint32(wire[i+4:]))
			}
			i += 10 + int(binary.BigEndian.Uint16(wire[i+8:]))
		}
	}
	return at, ttl, i == len(wire)
}

// fastAnswer writes into out the answer to the query in p from a template,
// or returns nil when the slow path must answer.
func (h *handler) fastAnswer(p []byte, q query, now time.Time, out []byte) ([]byte, *template) {
	t := h.tmpl.get(q.key)
	if t == nil {
		return nil, nil
	}
	if !now.Before(t.expires) || len(t.wire) > q.size || t.gen != h.sb.Bindings.gen.Load() || t.pol != h.sb.Policy() {
		return nil, nil
	}
	elapsed := uint32(0)
	if d := now.Sub(t.built); d > 0 {
		elapsed = uint32(d / time.Second)
	}
	if !t.allowedUntil.IsZero() {
		left := time.Duration(t.minTTL-min(elapsed, t.minTTL)) * time.Second
		need := now.Add(max(left, h.r.cfg.MinTTL) + h.r.cfg.Grace)
		if need.After(t.allowedUntil.Add(refreshSlack)) {
			return nil, nil
		}
	}
	out = append(out[:0], t.wire...)
	out[0], out[1] = p[0], p[1]
	out[2] = out[2]&^0x01 | p[2]&0x01 // RD
	out[3] = out[3]&^0x10 | p[3]&0x10 // CD
	copy(out[12:t.qnameAt], p[12:q.nameEnd])
	for i, at := range t.ttlAt {
		binary.BigEndian.PutUint32(out[at:], t.ttl[i]-min(elapsed, t.ttl[i]))
	}
	return out, t
}
