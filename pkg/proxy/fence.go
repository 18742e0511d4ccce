package proxy

import (
	"net"
	"net/netip"

	"github.com/sluice-dev/sluice/pkg/fence"
)

// refuseAtConnFence closes a connection accepted past the sandbox's
// connections fence, with a reset, and reports it with the original
// destination: orig when the caller looked it up, else asked of s.sb.Orig
// (which consumes it: the connection is gone).
func (s *server) refuseAtConnFence(c net.Conn, orig *Origin) {
	var dst netip.AddrPort
	if orig != nil {
		dst = netip.AddrPortFrom(orig.Dst.Addr().Unmap(), orig.Dst.Port())
	} else if client, err := remoteAddrPort(c); err == nil {
		if o, err := s.sb.Orig.OriginalDst(netip.AddrPortFrom(client.Addr().Unmap(), client.Port())); err == nil {
			dst = netip.AddrPortFrom(o.Dst.Addr().Unmap(), o.Dst.Port())
		}
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
	s.sb.Fence.Refuse(fence.Connections, dst, false)
}

// headFence charges the bytes an HTTP/1.x request head reads to the
// sandbox's request_head_bytes fence until the head is complete (done) or
// the connection ends (done too). A nil *headFence charges nothing.
type headFence struct {
	f       *fence.Sandbox
	dst     netip.AddrPort
	charged int64
}

func (s *server) newHeadFence(ci *connInfo) *headFence {
	if s.sb.Fence == nil {
		return nil
	}
	return &headFence{f: s.sb.Fence, dst: ci.orig.Dst}
}

// charge reports whether n more bytes of an unfinished head fit.
func (h *headFence) charge(n int) bool {
	if h == nil || n <= 0 {
		return true
	}
	if !h.f.Charge(int64(n)) {
		h.f.Refuse(fence.RequestHeadBytes, h.dst, false)
		return false
	}
	h.charged += int64(n)
	return true
}

// done gives back what the head charged.
func (h *headFence) done() {
	if h == nil {
		return
	}
	h.f.Uncharge(h.charged)
	h.charged = 0
}
