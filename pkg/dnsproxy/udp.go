package dnsproxy

import (
	"errors"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/fence"
)

// maxSlowUDP bounds the UDP queries answered concurrently off the fast path
// (cache misses wait for upstreams); past it queries are dropped, so a
// sandbox flooding slow names cannot stall its cached answers.
const maxSlowUDP = 512

// serveUDP answers queries on pc until pc is closed. Readers answer fast
// path hits inline; other queries get a goroutine each. It returns when pc
// is closed and every query it started has been answered.
//
// A *net.UDPConn gets one reader that moves batches of datagrams per
// system call (readBatches): on loopback the cost of a query is mostly the
// system calls and the scheduler, and one reader with batches beat
// several readers contending for the socket with one datagram each. Other
// PacketConns get min(GOMAXPROCS, 4) readers of one datagram at a time.
func (h *handler) serveUDP(pc net.PacketConn) error {
	var wg sync.WaitGroup
	sem := make(chan struct{}, maxSlowUDP)
	var err error
	if uc, ok := pc.(*net.UDPConn); ok {
		// One reader, on this goroutine (a goroutine less per listener:
		// 10,000 idle sandboxes hold 20,000 fewer stacks, issue #21).
		err = h.readBatches(uc, &wg, sem)
		wg.Wait()
	} else {
		readers := min(runtime.GOMAXPROCS(0), 4)
		errc := make(chan error, readers)
		for range readers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errc <- h.readUDP(pc, &wg, sem)
			}()
		}
		wg.Wait()
		err = <-errc
	}
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

type udpPeer struct {
	ap   netip.AddrPort // for *net.UDPConn
	addr net.Addr       // other PacketConns
}

// addrPort returns the peer as an AddrPort (invalid when unknown).
func (p udpPeer) addrPort() netip.AddrPort {
	if p.ap.IsValid() {
		return p.ap
	}
	if ua, ok := p.addr.(*net.UDPAddr); ok {
		return ua.AddrPort()
	}
	return netip.AddrPort{}
}

// maxQuerySize bounds a UDP query read.
const maxQuerySize = 4096

// readUDP serves a PacketConn that is not a *net.UDPConn (no batches).
func (h *handler) readUDP(pc net.PacketConn, wg *sync.WaitGroup, sem chan struct{}) error {
	// Queries are small (a name, a question, an OPT record): a 4 KiB
	// buffer per listener instead of 64 KiB keeps an idle sandbox cheap.
	// A longer datagram is truncated by the read and answered FORMERR.
	buf := make([]byte, maxQuerySize)
	out := make([]byte, 0, 1500)
	key := make([]byte, 0, 300)
	for {
		var peer udpPeer
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			if isTimeout(err) {
				continue
			}
			return err
		}
		peer.addr = addr
		out, key = h.answerUDP(pc, nil, peer, buf[:n], wg, sem, out, key)
	}
}

// answerUDP answers one datagram p from peer, as every unbatched reader
// does: past the sandbox's dns_qps fence REFUSED; a template hit inline,
// written into out (with key as scratch space); any other query on a
// goroutine bounded by sem (startSlow). It returns the buffers to reuse.
func (h *handler) answerUDP(pc net.PacketConn, uc *net.UDPConn, peer udpPeer, p []byte, wg *sync.WaitGroup, sem chan struct{}, out, key []byte) ([]byte, []byte) {
	now := h.r.now()
	if !h.sb.Fence.Query(now) {
		h.sb.Fence.Refuse(fence.DNSQPS, netip.AddrPort{}, true)
		h.refuseUDP(pc, uc, peer, p)
		return out, key
	}
	ans, t, key := h.fastHit(p, now, out, key)
	if ans == nil {
		h.startSlow(pc, uc, peer, p, now, wg, sem)
		return out, key
	}
	h.writeUDP(pc, uc, peer, ans)
	ev := t.ev
	ev.Time = now
	h.emit(ev, peer.addrPort(), false)
	return ans, key
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// startSlow answers p off the reader in a goroutine of its own, or drops it
// when maxSlowUDP queries are already waiting.
func (h *handler) startSlow(pc net.PacketConn, uc *net.UDPConn, peer udpPeer, p []byte, now time.Time, wg *sync.WaitGroup, sem chan struct{}) {
	select {
	case sem <- struct{}{}:
	default:
		// Too many queries waiting for upstreams: drop this one (the
		// client retries) rather than stall the fast path.
		h.emit(audit.Event{
			V: audit.SchemaVersion, Time: now, Kind: audit.KindDNS,
			Sandbox: h.sb.Name, CgroupID: h.sb.ID,
			Decision: audit.DecisionError, Reason: "resolver overloaded, query dropped",
		}, peer.addrPort(), false)
		return
	}
	pkt := append([]byte(nil), p...)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer func() { <-sem }()
		h.slowUDP(pc, uc, peer, pkt)
	}()
}

// fastHit writes into out the answer to p from a template, with key as
// scratch space; ans is nil when the slow path must answer.
func (h *handler) fastHit(p []byte, now time.Time, out, key []byte) (ans []byte, t *template, keyBuf []byte) {
	q, ok := parseQuery(p, key)
	if !ok {
		return nil, nil, q.key
	}
	ans, t = h.fastAnswer(p, q, now, out)
	return ans, t, q.key
}

func (h *handler) writeUDP(pc net.PacketConn, uc *net.UDPConn, peer udpPeer, b []byte) {
	var err error
	if uc != nil {
		_, err = uc.WriteToUDPAddrPort(b, peer.ap)
	} else {
		_, err = pc.WriteTo(b, peer.addr)
	}
	if err != nil {
		h.r.log.Debug("writing dns answer", "sandbox", h.sb.Name, "err", err)
	}
}

// slowUDP answers one query through the full handler and keeps the answer
// as a fast path template when it may be reused.
func (h *handler) slowUDP(pc net.PacketConn, uc *net.UDPConn, peer udpPeer, pkt []byte) {
	req := new(dns.Msg)
	if err := req.Unpack(pkt); err != nil {
		h.formErr(pc, uc, peer, pkt)
		return
	}
	rp := h.r.answer(h.sb, req, false)
	if rp.msg == nil {
		h.emit(rp.ev, peer.addrPort(), false)
		return
	}
	wire, err := rp.msg.Pack()
	if err != nil {
		h.r.log.Debug("packing dns answer", "sandbox", h.sb.Name, "err", err)
		h.emit(rp.ev, peer.addrPort(), false)
		return
	}
	h.writeUDP(pc, uc, peer, wire)
	h.emit(rp.ev, peer.addrPort(), false)
	if !rp.expires.After(rp.ev.Time) {
		return
	}
	q, ok := parseQuery(pkt, nil)
	if !ok {
		return
	}
	at, ttl, ok := ttlOffsets(wire)
	if !ok || len(wire) < q.nameEnd {
		return
	}
	h.tmpl.put(q.key, &template{
		wire: wire, qnameAt: q.nameEnd, ttlAt: at, ttl: ttl,
		built: rp.ev.Time, expires: rp.expires,
		allowedUntil: rp.allowedUntil, minTTL: rp.minTTL,
		pol: rp.pol, gen: rp.gen, ev: rp.ev,
	})
}

// formErr answers a query that cannot be unpacked with FORMERR, as
// miekg/dns's server does, and drops anything that is not a query.
func (h *handler) formErr(pc net.PacketConn, uc *net.UDPConn, peer udpPeer, pkt []byte) {
	ev := audit.Event{
		V: audit.SchemaVersion, Time: h.r.now(), Kind: audit.KindDNS,
		Sandbox: h.sb.Name, CgroupID: h.sb.ID,
		Decision: audit.DecisionDeny, Reason: "malformed query",
	}
	if len(pkt) < 12 || pkt[2]&0x80 != 0 {
		h.emit(ev, peer.addrPort(), false)
		return
	}
	m := new(dns.Msg)
	m.Id = uint16(pkt[0])<<8 | uint16(pkt[1])
	m.Response = true
	m.Opcode = int(pkt[2]>>3) & 0xf
	m.Rcode = dns.RcodeFormatError
	ev.Rcode = dns.RcodeToString[m.Rcode]
	if wire, err := m.Pack(); err == nil {
		h.writeUDP(pc, uc, peer, wire)
	}
	h.emit(ev, peer.addrPort(), false)
}
