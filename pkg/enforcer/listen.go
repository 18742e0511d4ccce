package enforcer

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// Listen lets peers in Prefix connect to the sandbox's listeners on Ports
// (a listen rule). Without one, TCP binds stay on loopback and accepted
// connections from any peer but loopback send nothing.
type Listen struct {
	Prefix netip.Prefix
	Ports  []uint16 // 1 to 8 ports
}

// SetListen replaces the sandbox's listen entries.
func (s *Sandbox) SetListen(entries []Listen) error {
	s.e.mu.Lock()
	defer s.e.mu.Unlock()
	peers := map[sluiceAllowKey]sluiceAllowVal{}
	ports := map[sluiceListenPortKey]bool{}
	for _, en := range entries {
		p := en.Prefix.Masked()
		bits := p.Bits()
		if p.Addr().Is4() {
			bits += 96
		}
		k := sluiceAllowKey{Prefixlen: uint32(64 + bits), Addr: addrKey(p.Addr())}
		binary.NativeEndian.PutUint64(k.Sandbox[:], s.id)
		v := peers[k]
		for _, port := range en.Ports {
			ports[sluiceListenPortKey{Sandbox: s.id, Port: port}] = true
			if containsPort(v.Ports[:v.Nports], port) {
				continue
			}
			if int(v.Nports) == len(v.Ports) {
				return fmt.Errorf("listen from %s: at most %d ports per range in the kernel", en.Prefix, len(v.Ports))
			}
			v.Ports[v.Nports] = port
			v.Nports++
		}
		peers[k] = v
	}
	for k, v := range peers {
		if err := s.e.objs.ListenAllow.Update(&k, &v, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("listen update for %s: %w", netip.AddrFrom16(k.Addr), err)
		}
	}
	one := uint32(1)
	for k := range ports {
		if err := s.e.objs.ListenPorts.Update(&k, &one, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("listen port update for %d: %w", k.Port, err)
		}
	}
	s.e.deleteListenLocked(s.id, peers, ports)
	return nil
}

func containsPort(ps []uint16, p uint16) bool {
	for _, x := range ps {
		if x == p {
			return true
		}
	}
	return false
}

// deleteListenLocked removes the sandbox's listen entries not in keep
// (all of them when keep is empty).
func (e *Enforcer) deleteListenLocked(id uint64, keepPeers map[sluiceAllowKey]sluiceAllowVal, keepPorts map[sluiceListenPortKey]bool) {
	var k sluiceAllowKey
	var v sluiceAllowVal
	var del []sluiceAllowKey
	it := e.objs.ListenAllow.Iterate()
	for it.Next(&k, &v) {
		if binary.NativeEndian.Uint64(k.Sandbox[:]) != id {
			continue
		}
		if _, keep := keepPeers[k]; !keep {
			del = append(del, k)
		}
	}
	for i := range del {
		_ = e.objs.ListenAllow.Delete(&del[i])
	}
	var pk sluiceListenPortKey
	var one uint32
	var delp []sluiceListenPortKey
	pit := e.objs.ListenPorts.Iterate()
	for pit.Next(&pk, &one) {
		if pk.Sandbox == id && !keepPorts[pk] {
			delp = append(delp, pk)
		}
	}
	for i := range delp {
		_ = e.objs.ListenPorts.Delete(&delp[i])
	}
}
