package dnsproxy

import (
	"net"
	"net/netip"
	"runtime"
	"sync"

	"github.com/sluice-dev/sluice/pkg/fence"
)

// udpBatch is one reader's buffers. It starts with room for one query and
// doubles, up to maxBatch, whenever a read fills it: an idle sandbox's
// listener keeps one query buffer, a busy one reads up to maxBatch queries
// per system call.
type udpBatch struct {
	bufs  [][]byte         // queries, maxQuerySize each
	n     []int            // length of each query read
	peers []netip.AddrPort // who sent it
	outs  [][]byte         // fast path answer to bufs[i]
	hits  []int            // the queries of this batch answered from templates
	tmpls []*template      // and their templates, for the audit events
	key   []byte
}

// queryBufs lends the query buffer of a one-query batch: such a reader
// holds it only while a datagram is in hand, so idle sandboxes keep no
// query buffers (8 KiB each, two listeners; issue #21).
var queryBufs = sync.Pool{New: func() any { return new([maxQuerySize]byte) }}

// lend gives a one-query batch its buffer before a read.
func (b *udpBatch) lend() {
	if len(b.bufs) == 1 && b.bufs[0] == nil {
		b.bufs[0] = queryBufs.Get().(*[maxQuerySize]byte)[:]
	}
}

// giveBack returns a one-query batch's buffer after the query is handled
// (startSlow copies what it keeps).
func (b *udpBatch) giveBack() {
	if len(b.bufs) == 1 && b.bufs[0] != nil {
		queryBufs.Put((*[maxQuerySize]byte)(b.bufs[0]))
		b.bufs[0] = nil
	}
}

func (b *udpBatch) grow(n int) {
	for len(b.bufs) < n {
		b.bufs = append(b.bufs, make([]byte, maxQuerySize))
		b.outs = append(b.outs, nil)
	}
	b.n = make([]int, n)
	b.peers = make([]netip.AddrPort, n)
	b.hits = make([]int, 0, n)
	b.tmpls = make([]*template, 0, n)
}

// readBatches serves uc a batch of datagrams at a time: it answers the fast
// path hits of a batch with one write, then emits their events, and hands
// every other query to startSlow as readUDP does.
func (h *handler) readBatches(uc *net.UDPConn, wg *sync.WaitGroup, sem chan struct{}) error {
	bc, err := newBatchConn(uc)
	if err != nil {
		return err
	}
	var b udpBatch
	b.grow(1)
	bc.grow(1)
	b.giveBack()
	// alone sends an answer the batch write could not, on its own.
	alone := func(i int) { h.writeUDP(uc, uc, udpPeer{ap: b.peers[i]}, b.outs[i]) }
	for {
		if len(b.bufs) == 1 {
			// Wait for a datagram before taking a buffer.
			if err := bc.wait(); err != nil {
				if isTimeout(err) {
					continue
				}
				return err
			}
			b.lend()
		}
		n, err := bc.read(&b)
		if err != nil {
			b.giveBack()
			if isTimeout(err) {
				continue
			}
			return err
		}
		now := h.r.now()
		b.hits, b.tmpls = b.hits[:0], b.tmpls[:0]
		for i := range n {
			p := b.bufs[i][:b.n[i]]
			if !h.sb.Fence.Query(now) {
				h.sb.Fence.Refuse(fence.DNSQPS, netip.AddrPort{}, true)
				h.refuseUDP(uc, uc, udpPeer{ap: b.peers[i]}, p)
				continue
			}
			ans, t, key := h.fastHit(p, now, b.outs[i], b.key)
			b.key = key
			if ans == nil {
				h.startSlow(uc, uc, udpPeer{ap: b.peers[i]}, p, now, wg, sem)
				continue
			}
			b.outs[i] = ans
			b.hits = append(b.hits, i)
			b.tmpls = append(b.tmpls, t)
		}
		if len(b.hits) > 0 {
			bc.write(&b, alone)
		}
		for j, i := range b.hits {
			ev := b.tmpls[j].ev
			ev.Time = now
			h.emit(ev, b.peers[i], false)
		}
		// The reader gives up its P only when the socket is empty (its
		// system calls are raw), so under sustained load the goroutines
		// it wakes, the audit logger's above all, would wait for
		// preemption and its sink queues overflow. A yield per batch
		// costs a few nanoseconds per query.
		runtime.Gosched()
		if n == len(b.n) && n < maxBatch {
			b.grow(2 * n)
			bc.grow(2 * n)
		}
		b.giveBack()
	}
}
