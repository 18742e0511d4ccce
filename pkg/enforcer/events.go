package enforcer

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
)

// Refusal is one kernel refusal event from the ring buffer.
type Refusal struct {
	Time     time.Time
	Sandbox  uint64
	CgroupID uint64
	PID      uint32
	Comm     string
	Dst      netip.AddrPort
	Proto    uint16
	Reason   Reason
	Audit    bool // would have been refused; audit mode let it through
}

// Events delivers the kernel refusal events of this process's programs to fn
// until ctx is done. Run it in one goroutine per Enforcer.
func (e *Enforcer) Events(ctx context.Context, fn func(Refusal)) error {
	rd, err := ringbuf.NewReader(e.objs.Events)
	if err != nil {
		return fmt.Errorf("opening the event ring buffer: %w", err)
	}
	go func() {
		<-ctx.Done()
		rd.Close()
	}()
	for {
		rec, err := rd.Read()
		if err != nil {
			if errors.Is(err, ringbuf.ErrClosed) {
				return nil
			}
			return fmt.Errorf("reading events: %w", err)
		}
		var ev sluiceEvent
		if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &ev); err != nil {
			continue
		}
		fn(Refusal{
			Time:     wallAt(ev.TsNs),
			Sandbox:  ev.Sandbox,
			CgroupID: ev.Cgroup,
			PID:      ev.Pid,
			Comm:     cString(ev.Comm[:]),
			Dst:      netip.AddrPortFrom(netip.AddrFrom16(ev.Addr).Unmap(), ev.Port),
			Proto:    ev.Proto,
			Reason:   Reason(ev.Reason),
			Audit:    ev.Audit != 0,
		})
	}
}

// Blocked is one row of the refusal counters.
type Blocked struct {
	Sandbox  uint64
	Dst      netip.AddrPort
	Proto    uint16
	Reason   Reason
	Count    uint64
	LastSeen time.Time
}

// ReadBlocked reads the pinned refusal counters under pinDir (DefaultPinDir
// when empty) read-only. It needs no daemon and no loaded programs.
func ReadBlocked(pinDir string) ([]Blocked, error) {
	m, path, err := openPinned(pinDir, "counters")
	if m == nil {
		return nil, err
	}
	defer m.Close()
	var out []Blocked
	var k sluiceCounterKey
	var v sluiceCounterVal
	it := m.Iterate()
	for it.Next(&k, &v) {
		out = append(out, Blocked{
			Sandbox:  k.Sandbox,
			Dst:      netip.AddrPortFrom(netip.AddrFrom16(k.Addr).Unmap(), k.Port),
			Proto:    k.Proto,
			Reason:   Reason(k.Reason),
			Count:    v.Count,
			LastSeen: wallAt(v.LastNs),
		})
	}
	if err := it.Err(); err != nil {
		return out, fmt.Errorf("reading %s: %w", path, err)
	}
	return out, nil
}

// RegisteredSandboxes lists the sandbox ids in the pinned sandbox table.
func RegisteredSandboxes(pinDir string) ([]uint64, error) {
	m, _, err := openPinned(pinDir, "sandboxes")
	if m == nil {
		return nil, err
	}
	defer m.Close()
	var ids []uint64
	var k uint64
	var v sluiceSandboxCfg
	it := m.Iterate()
	for it.Next(&k, &v) {
		ids = append(ids, k)
	}
	return ids, it.Err()
}

// openPinned opens a pinned map read-only. A map that was never pinned
// gives (nil, path, nil): nothing has run yet.
func openPinned(pinDir, name string) (*ebpf.Map, string, error) {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	path := filepath.Join(pinDir, "maps", name)
	m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, path, nil
		}
		return nil, path, fmt.Errorf("opening %s (needs root or CAP_BPF): %w", path, err)
	}
	return m, path, nil
}

// Count adds one refusal the daemon decided itself (a resource fence) to
// the sandbox's pinned refusal counters, so `sluice blocked` shows it with
// the kernel's own. dst may be the zero value.
func (s *Sandbox) Count(reason Reason, dst netip.AddrPort, proto uint16) error {
	k := sluiceCounterKey{Sandbox: s.id, Port: dst.Port(), Proto: proto, Reason: uint32(reason)}
	if dst.IsValid() {
		k.Addr = addrKey(dst.Addr())
	}
	now := uint64(monoNow())
	var v sluiceCounterVal
	s.e.cmu.Lock()
	defer s.e.cmu.Unlock()
	if err := s.e.objs.Counters.Lookup(&k, &v); err != nil {
		v = sluiceCounterVal{}
	}
	v.Count++
	v.LastNs = now
	if err := s.e.objs.Counters.Update(&k, &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("counting %s: %w", reason, err)
	}
	return nil
}
