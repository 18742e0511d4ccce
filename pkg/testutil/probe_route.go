package testutil

import (
	"net/netip"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Probe modes of the source-routing attacks (issue 18). The target is
// "HOP|DST|MARKER": the packet is addressed to DST (which connect/sendmsg
// see) but carries a route whose first hop is HOP; its payload is MARKER.
//
//	rthdr6udp     setsockopt(IPV6_RTHDR) on a UDP socket, sendto(DST)
//	rthdr6cmsg    IPV6_RTHDR as sendmsg ancillary data (no setsockopt)
//	rthdr6tfo     setsockopt(IPV6_RTHDR) + TCP_FASTOPEN_NO_COOKIE, then
//	              sendto(DST, MSG_FASTOPEN): a SYN carrying the marker
//	lsrr4udp      setsockopt(IP_OPTIONS, LSRR HOP) on a UDP socket (root)
//	lsrr4cmsg     IP_RETOPTS (LSRR HOP) as sendmsg ancillary data (root)
//
// The outcome names the step that failed: "error setsockopt EPERM",
// "error send EPERM", or "ok sent".
func routeProbe(mode, target string) (string, bool) {
	switch mode {
	case "rthdr6udp", "rthdr6cmsg", "rthdr6tfo", "lsrr4udp", "lsrr4cmsg":
	default:
		return "", false
	}
	f := strings.SplitN(target, "|", 3)
	if len(f) != 3 {
		return "error target is not HOP|DST|MARKER", true
	}
	hop, err1 := netip.ParseAddr(f[0])
	dst, err2 := netip.ParseAddrPort(f[1])
	if err1 != nil || err2 != nil {
		return "error bad HOP or DST", true
	}
	msg := []byte(f[2])
	if strings.HasPrefix(mode, "lsrr4") {
		return lsrr4(mode, hop, dst, msg), true
	}
	return rthdr6(mode, hop, dst, msg), true
}

// srh is a segment routing header (type 4, the one the kernel accepts
// without CONFIG_IPV6_MIP6) whose next segment is hop. segments[0], the
// final destination, is filled in by the kernel from the socket address.
func srh(hop netip.Addr) []byte {
	a := hop.As16()
	b := []byte{0 /* next header: set by the kernel */, 4 /* 32 bytes of segments / 8 */, 4 /* type 4 */, 1 /* segments left */, 1 /* last entry */, 0, 0, 0}
	b = append(b, make([]byte, 16)...)
	return append(b, a[:]...)
}

func rthdr6(mode string, hop netip.Addr, dst netip.AddrPort, msg []byte) string {
	typ := unix.SOCK_DGRAM
	if mode == "rthdr6tfo" {
		typ = unix.SOCK_STREAM
	}
	fd, err := unix.Socket(unix.AF_INET6, typ, 0)
	if err != nil {
		return "error socket " + errnoName(err)
	}
	defer unix.Close(fd)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &unix.Timeval{Sec: 1})
	sa := &unix.SockaddrInet6{Port: int(dst.Port()), Addr: dst.Addr().As16()}
	rh := srh(hop)
	switch mode {
	case "rthdr6cmsg":
		oob := cmsg(unix.IPPROTO_IPV6, unix.IPV6_RTHDR, rh)
		if err := unix.Sendmsg(fd, msg, oob, sa, 0); err != nil {
			return "error send " + errnoName(err)
		}
		return "ok sent"
	case "rthdr6tfo":
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_FASTOPEN_NO_COOKIE, 1); err != nil {
			return "error setsockopt TCP_FASTOPEN_NO_COOKIE " + errnoName(err)
		}
	}
	if err := unix.SetsockoptString(fd, unix.IPPROTO_IPV6, unix.IPV6_RTHDR, string(rh)); err != nil {
		return "error setsockopt " + errnoName(err)
	}
	flags := 0
	if mode == "rthdr6tfo" {
		flags = unix.MSG_FASTOPEN
	}
	if err := unix.Sendto(fd, msg, flags, sa); err != nil {
		// The SYN left, and the call waited for an answer nobody sends:
		// until SO_SNDTIMEO (EAGAIN), or until a signal (EINTR: with a
		// send timeout the kernel does not restart the call, and Go's
		// runtime signals its threads for preemption). A refused
		// connect fails before the SYN, with EPERM.
		if mode == "rthdr6tfo" && (err == unix.EINPROGRESS || err == unix.EAGAIN || err == unix.ETIMEDOUT || err == unix.EINTR) {
			return "ok sent"
		}
		return "error send " + errnoName(err)
	}
	return "ok sent"
}

func lsrr4(mode string, hop netip.Addr, dst netip.AddrPort, msg []byte) string {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		return "error socket " + errnoName(err)
	}
	defer unix.Close(fd)
	h := hop.As4()
	// NOP, then LSRR: type 0x83, length 7, pointer 4, the first hop.
	opts := []byte{1, 0x83, 7, 4, h[0], h[1], h[2], h[3]}
	sa := &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
	if mode == "lsrr4cmsg" {
		if err := unix.Sendmsg(fd, msg, cmsg(unix.IPPROTO_IP, unix.IP_RETOPTS, opts), sa, 0); err != nil {
			return "error send " + errnoName(err)
		}
		return "ok sent"
	}
	if err := unix.SetsockoptString(fd, unix.IPPROTO_IP, unix.IP_OPTIONS, string(opts)); err != nil {
		return "error setsockopt " + errnoName(err)
	}
	if err := unix.Sendto(fd, msg, 0, sa); err != nil {
		return "error send " + errnoName(err)
	}
	return "ok sent"
}

func cmsg(level, typ int, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level = int32(level)
	h.Type = int32(typ)
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[unix.CmsgLen(0):], data)
	return b
}
