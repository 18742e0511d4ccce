package enforcer

import "encoding/binary"

// The allow map is one LPM trie shared by every sandbox on the host, keyed
// by {prefix length, sandbox id, address}. A trie cannot be seeked by
// sandbox, so finding one sandbox's entries means walking every entry of
// every sandbox (two bpf(2) calls each). Done on every attach (to replace
// the static entries) and detach, that made attaching the n-th sandbox
// O(n): 54% of the daemon's CPU at 1,000 sandboxes, and the attach p99 of
// 849 ms at 2,500 (issue #21).
//
// The Enforcer therefore keeps, per sandbox, the set of allow keys it wrote
// (allowIndex). A sandbox's set is exact when
//   - this process registered the sandbox itself (Attach found no
//     registration: an unregistered id has no allow entries, because
//     Detach removes the entries before the registration), or
//   - this process has walked the map once for that sandbox (a sandbox
//     re-adopted from an earlier process, or a Sandbox handle).
// From then on every write of this process goes through the index, and the
// entries of a sandbox are only ever written by the process that runs it
// (the kernel only reads the map). GC of other processes may delete
// entries behind the index: a key the index has and the kernel does not is
// harmless (deleting it again is a no-op); a key missing from the index
// never happens for an exact set.

// allowIndex maps a sandbox id to its allow keys (value: static entry).
// It is guarded by Enforcer.mu.
type allowIndex map[uint64]map[sluiceAllowKey]bool

func sandboxOf(k *sluiceAllowKey) uint64 { return binary.NativeEndian.Uint64(k.Sandbox[:]) }

// keysLocked returns the exact set of allow keys of sandbox id, walking the
// map once when this process does not know it yet. e.mu is held.
func (e *Enforcer) keysLocked(id uint64) map[sluiceAllowKey]bool {
	if e.idx == nil {
		e.idx = allowIndex{}
	}
	if set, ok := e.idx[id]; ok {
		return set
	}
	set := map[sluiceAllowKey]bool{}
	var k sluiceAllowKey
	var v sluiceAllowVal
	it := e.objs.Allow.Iterate()
	for it.Next(&k, &v) {
		if sandboxOf(&k) == id {
			set[k] = v.Flags&alStatic != 0
		}
	}
	e.idx[id] = set
	return set
}

// freshLocked records that sandbox id has no allow entries (this process
// has just registered it). e.mu is held.
func (e *Enforcer) freshLocked(id uint64) {
	if e.idx == nil {
		e.idx = allowIndex{}
	}
	e.idx[id] = map[sluiceAllowKey]bool{}
}

// noteLocked records a written key. e.mu is held.
func (e *Enforcer) noteLocked(k *sluiceAllowKey, static bool) {
	if set, ok := e.idx[sandboxOf(k)]; ok {
		set[*k] = static
	}
}

// forgetKeyLocked records a deleted key. e.mu is held.
func (e *Enforcer) forgetKeyLocked(k *sluiceAllowKey) {
	if set, ok := e.idx[sandboxOf(k)]; ok {
		delete(set, *k)
	}
}
