package dnsproxy

import (
	"net"
	"net/netip"
	"sync"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// maxBatch bounds the datagrams one recvmmsg or sendmmsg moves.
const maxBatch = 32

// batchConn reads and writes several datagrams per system call (recvmmsg,
// sendmmsg on Linux; one at a time elsewhere). ipv4.Message and
// ipv6.Message are the same type.
type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

func newBatchConn(uc *net.UDPConn) batchConn {
	if a, ok := uc.LocalAddr().(*net.UDPAddr); ok && a.IP.To4() == nil {
		return ipv6.NewPacketConn(uc)
	}
	return ipv4.NewPacketConn(uc)
}

// udpBatch is one reader's buffers. It starts with room for one query and
// doubles, up to maxBatch, whenever a read fills it: an idle sandbox's
// listener keeps one query buffer, a busy one reads up to maxBatch queries
// per system call.
type udpBatch struct {
	in   []ipv4.Message // in[i] reads into bufs[i]
	bufs [][]byte
	outs [][]byte       // fast path answer to in[i]
	out  []ipv4.Message // the answers of one batch
	hits []batchHit     // their audit events, emitted once they are sent
	key  []byte
}

type batchHit struct {
	t    *template
	peer netip.AddrPort
}

func (b *udpBatch) grow(n int) {
	for len(b.bufs) < n {
		b.bufs = append(b.bufs, make([]byte, maxQuerySize))
		b.outs = append(b.outs, nil)
	}
	b.in = make([]ipv4.Message, n)
	for i := range b.in {
		b.in[i].Buffers = b.bufs[i : i+1]
	}
	b.out = make([]ipv4.Message, 0, n)
	b.hits = make([]batchHit, 0, n)
}

// readBatches serves uc a batch of datagrams at a time: it answers the fast
// path hits of a batch into one sendmmsg, then emits their events, and
// hands every other query to startSlow as readUDP does.
func (h *handler) readBatches(uc *net.UDPConn, wg *sync.WaitGroup, sem chan struct{}) error {
	bc := newBatchConn(uc)
	var b udpBatch
	b.grow(1)
	for {
		n, err := bc.ReadBatch(b.in, 0)
		if err != nil {
			if isTimeout(err) {
				continue
			}
			return err
		}
		now := h.r.now()
		b.out, b.hits = b.out[:0], b.hits[:0]
		for i := range n {
			m := &b.in[i]
			var peer udpPeer
			if ua, ok := m.Addr.(*net.UDPAddr); ok {
				peer.ap = ua.AddrPort()
			}
			p := b.bufs[i][:m.N]
			var ans []byte
			var t *template
			ans, t, b.key = h.fastHit(p, now, b.outs[i], b.key)
			if ans == nil {
				h.startSlow(uc, uc, peer, p, now, wg, sem)
				continue
			}
			b.outs[i] = ans
			b.out = append(b.out, ipv4.Message{Buffers: b.outs[i : i+1], Addr: m.Addr})
			b.hits = append(b.hits, batchHit{t: t, peer: peer.ap})
		}
		h.writeBatch(bc, uc, b.out)
		for _, x := range b.hits {
			ev := x.t.ev
			ev.Time = now
			h.emit(ev, x.peer, false)
		}
		if n == len(b.in) && n < maxBatch {
			b.grow(2 * n)
		}
	}
}

// writeBatch sends ms, one sendmmsg for as many as the kernel takes. A
// message sendmmsg refuses is sent alone, which logs why (and converts
// addresses sendmmsg cannot, such as IPv4 peers of a dual-stack socket).
func (h *handler) writeBatch(bc batchConn, uc *net.UDPConn, ms []ipv4.Message) {
	for len(ms) > 0 {
		n, err := bc.WriteBatch(ms, 0)
		if err == nil && n > 0 {
			ms = ms[n:]
			continue
		}
		var peer udpPeer
		if ua, ok := ms[0].Addr.(*net.UDPAddr); ok {
			peer.ap = ua.AddrPort()
		}
		h.writeUDP(uc, uc, peer, ms[0].Buffers[0])
		ms = ms[1:]
	}
}
