package dnsproxy

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Binding records that a sandbox was told a name resolves to an address.
type Binding struct {
	// Name is the name the sandbox asked for (normalised: lower case, no
	// trailing dot).
	Name string
	// Target is the remap target the address really belongs to (the mirror
	// host), empty without a remap.
	Target string
	// Until is when the binding (and its allowlist entry) expires.
	Until time.Time
}

// Bindings remembers, for one sandbox, which names resolved to which
// addresses, so the proxy can recover the intended host when a connection
// carries no SNI or Host. It is bounded twice: at most perNameCap addresses
// per name (least recently answered evicted first, so rotating answers
// accumulate) and at most size addresses overall. It is safe for concurrent
// use.
type Bindings struct {
	mu      sync.Mutex
	perName int
	names   *simplelru.LRU[string, *simplelru.LRU[netip.Addr, struct{}]]
	addrs   *simplelru.LRU[netip.Addr, *addrState]
	// released collects addresses that lost their last binding during one
	// call; guarded by mu.
	released []netip.Addr
	// gen counts calls to Add that released addresses.
	gen atomic.Uint64
}

type addrState struct {
	bindings []Binding
	// allowed is the expiry last written to the allowlist for the address,
	// direct the flag it was written with.
	allowed time.Time
	direct  bool
}

// NewBindings returns empty Bindings holding at most size addresses and at
// most perNameCap addresses per name. Values <= 0 take DefaultBindings and
// DefaultPerNameCap.
func NewBindings(size, perNameCap int) *Bindings {
	if size <= 0 {
		size = DefaultBindings
	}
	if perNameCap <= 0 {
		perNameCap = DefaultPerNameCap
	}
	b := &Bindings{perName: perNameCap}
	// Errors only for size <= 0, excluded above.
	b.addrs, _ = simplelru.NewLRU(size, func(a netip.Addr, _ *addrState) {
		b.released = append(b.released, a)
	})
	b.names, _ = simplelru.NewLRU(size, func(name string, set *simplelru.LRU[netip.Addr, struct{}]) {
		for _, a := range set.Keys() {
			b.unbind(name, a)
		}
	})
	return b
}

// unbind removes name's binding of a; mu is held.
func (b *Bindings) unbind(name string, a netip.Addr) {
	st, ok := b.addrs.Peek(a)
	if !ok {
		return
	}
	kept := st.bindings[:0]
	for _, bd := range st.bindings {
		if bd.Name != name {
			kept = append(kept, bd)
		}
	}
	clear(st.bindings[len(kept):])
	st.bindings = kept
	if len(kept) == 0 {
		b.addrs.Remove(a) // appends a to b.released
	}
}

// Add records that name (remapped to target, or "" without a remap)
// resolved to addrs until the given time. It returns the addresses that no
// name is bound to any more because of evictions this call caused.
func (b *Bindings) Add(name, target string, addrs []netip.Addr, until time.Time) (released []netip.Addr) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.released = b.released[:0]
	set, ok := b.names.Get(name)
	if !ok {
		set, _ = simplelru.NewLRU(b.perName, func(a netip.Addr, _ struct{}) {
			b.unbind(name, a)
		})
		b.names.Add(name, set)
	}
	for _, a := range addrs {
		st, ok := b.addrs.Get(a)
		if !ok {
			st = &addrState{}
			b.addrs.Add(a, st)
		}
		found := false
		for i := range st.bindings {
			if st.bindings[i].Name == name {
				st.bindings[i].Target = target
				if until.After(st.bindings[i].Until) {
					st.bindings[i].Until = until
				}
				found = true
				break
			}
		}
		if !found {
			st.bindings = append(st.bindings, Binding{Name: name, Target: target, Until: until})
		}
		set.Add(a, struct{}{})
	}
	// An address evicted from the name set and re-added in the same call
	// is bound again: keep only the ones really gone.
	for _, a := range b.released {
		if _, ok := b.addrs.Peek(a); !ok {
			released = append(released, a)
		}
	}
	if len(released) > 0 {
		b.gen.Add(1)
	}
	return released
}

// Lookup returns the unexpired bindings of addr, oldest binding first.
func (b *Bindings) Lookup(addr netip.Addr) []Binding {
	addr = addr.Unmap()
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	st, ok := b.addrs.Peek(addr)
	if !ok {
		return nil
	}
	var out []Binding
	for _, bd := range st.bindings {
		if bd.Until.After(now) {
			out = append(out, bd)
		}
	}
	return out
}

// Names returns the names the sandbox asked for that are bound to addr and
// have not expired.
func (b *Bindings) Names(addr netip.Addr) []string {
	bs := b.Lookup(addr)
	if len(bs) == 0 {
		return nil
	}
	out := make([]string, len(bs))
	for i, bd := range bs {
		out[i] = bd.Name
	}
	return out
}

// needsAllow reports whether the allowlist entry of a must be (re)written to
// last until the given time with the given direct flag. Rewrites within
// refreshSlack of the last written expiry are skipped.
func (b *Bindings) needsAllow(a netip.Addr, until time.Time, direct bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	st, ok := b.addrs.Peek(a)
	if !ok {
		return true
	}
	return st.direct != direct || st.allowed.Before(until.Add(-refreshSlack))
}

// allowed records that the allowlist entry of a was written.
func (b *Bindings) allowed(a netip.Addr, until time.Time, direct bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if st, ok := b.addrs.Peek(a); ok {
		if until.After(st.allowed) || st.direct != direct {
			st.allowed = until
		}
		st.direct = direct
	}
}

// refreshSlack is how much sooner than asked an allowlist entry may expire
// before it is written again; it keeps cache hits from writing kernel maps
// on every query.
const refreshSlack = time.Second
