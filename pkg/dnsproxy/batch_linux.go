package dnsproxy

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// maxBatch bounds the datagrams one recvmmsg or sendmmsg moves.
const maxBatch = 32

// batchConn reads and writes a UDP socket with recvmmsg and sendmmsg.
//
// The calls are RawSyscalls inside RawConn.Read and Write with
// MSG_DONTWAIT, so neither waits (EAGAIN parks the goroutine in the
// netpoller as any read does). Without the runtime's syscall bookkeeping,
// sysmon does not hand the reader's P to another thread in the middle of a
// batch of sends: with it (x/net's ReadBatch and WriteBatch) the handoffs
// and sysmon's wakeups cost about a tenth of the resolver's CPU, and
// x/net allocates a net.UDPAddr per datagram. Replies go to the sockaddr
// the query came from, byte for byte, so scoped and v4-mapped peers need
// no conversion.
type batchConn struct {
	rc syscall.RawConn

	rhdrs  []unix.Mmsghdr
	riovs  []unix.Iovec
	rnames []unix.RawSockaddrInet6 // room for either family

	whdrs  []unix.Mmsghdr
	wiovs  []unix.Iovec   // wiovs[j] holds the answer to b.hits[j]
	wstart []int          // message m sends b.hits[wstart[m]:wstart[m+1]]
	whs    []unix.Mmsghdr // the messages left to send
	cmsgs  []byte         // a UDP_SEGMENT control message per message
	gso    bool           // group answers with UDP_SEGMENT

	n      int
	errno  syscall.Errno
	readF  func(fd uintptr) bool
	writeF func(fd uintptr) bool
	waitF  func(fd uintptr) bool
	peek   [1]byte
}

func newBatchConn(uc *net.UDPConn) (*batchConn, error) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	c := &batchConn{rc: rc, gso: true}
	c.readF = func(fd uintptr) bool { return c.mmsg(unix.SYS_RECVMMSG, fd, c.rhdrs) }
	c.writeF = func(fd uintptr) bool { return c.mmsg(unix.SYS_SENDMMSG, fd, c.whs) }
	c.waitF = func(fd uintptr) bool {
		_, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&c.peek[0])), 1, unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		for e == unix.EINTR {
			_, _, e = unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&c.peek[0])), 1, unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		}
		return e != unix.EAGAIN // other errors: the read reports them
	}
	return c, nil
}

// wait blocks until a datagram is waiting, without reading it (a
// one-query reader takes its buffer only then).
func (c *batchConn) wait() error { return c.rc.Read(c.waitF) }

// mmsg makes one recvmmsg or sendmmsg call; it reports false (wait and
// call again) on EAGAIN.
func (c *batchConn) mmsg(trap, fd uintptr, hs []unix.Mmsghdr) bool {
	n, _, e := unix.RawSyscall6(trap, fd, uintptr(unsafe.Pointer(&hs[0])), uintptr(len(hs)), unix.MSG_DONTWAIT, 0, 0)
	for e == unix.EINTR {
		n, _, e = unix.RawSyscall6(trap, fd, uintptr(unsafe.Pointer(&hs[0])), uintptr(len(hs)), unix.MSG_DONTWAIT, 0, 0)
	}
	if e == unix.EAGAIN {
		return false
	}
	c.n, c.errno = int(n), e
	return true
}

// grow makes room for n datagrams; the caller grows b first.
func (c *batchConn) grow(n int) {
	c.rhdrs = make([]unix.Mmsghdr, n)
	c.riovs = make([]unix.Iovec, n)
	c.rnames = make([]unix.RawSockaddrInet6, n)
	c.whdrs = make([]unix.Mmsghdr, n)
	c.wiovs = make([]unix.Iovec, n)
	c.wstart = make([]int, 0, n+1)
	c.cmsgs = make([]byte, n*gsoCmsgSpace)
}

// read fills b with up to len(b.n) datagrams, waiting for the first.
func (c *batchConn) read(b *udpBatch) (int, error) {
	for i := range c.rhdrs {
		c.riovs[i].Base = &b.bufs[i][0]
		c.riovs[i].SetLen(len(b.bufs[i]))
		h := &c.rhdrs[i].Hdr
		*h = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&c.rnames[i])), Namelen: unix.SizeofSockaddrInet6, Iov: &c.riovs[i]}
		h.SetIovlen(1)
	}
	c.n, c.errno = 0, 0
	if err := c.rc.Read(c.readF); err != nil {
		return 0, err
	}
	if c.errno != 0 {
		return 0, &net.OpError{Op: "read", Net: "udp", Err: os.NewSyscallError("recvmmsg", c.errno)}
	}
	for i := range c.n {
		b.n[i] = int(c.rhdrs[i].Len)
		b.peers[i] = sockaddrPeer(&c.rnames[i], c.rhdrs[i].Hdr.Namelen)
	}
	return c.n, nil
}

// sockaddrPeer converts a received sockaddr (invalid if it is neither
// family).
func sockaddrPeer(sa *unix.RawSockaddrInet6, l uint32) netip.AddrPort {
	pb := (*[2]byte)(unsafe.Pointer(&sa.Port)) // network byte order
	port := uint16(pb[0])<<8 | uint16(pb[1])
	switch {
	case sa.Family == unix.AF_INET && l >= unix.SizeofSockaddrInet4:
		s4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(s4.Addr), port)
	case sa.Family == unix.AF_INET6 && l >= unix.SizeofSockaddrInet6:
		a := netip.AddrFrom16(sa.Addr)
		if sa.Scope_id != 0 {
			a = a.WithZone(strconv.FormatUint(uint64(sa.Scope_id), 10))
		}
		return netip.AddrPortFrom(a, port)
	}
	return netip.AddrPort{}
}

// maxGSOBytes bounds the payload of one UDP_SEGMENT send (a UDP
// datagram's limit, less room for headers).
const maxGSOBytes = 60000

// write sends b.outs[i] for every i in b.hits to the address b.bufs[i] came
// from, in as few sendmmsg calls as the kernel takes. Consecutive answers
// of one size to one peer (a client with many queries in flight) go as one
// message with UDP_SEGMENT: the kernel cuts it into datagrams after the
// loopback hop, so the output path runs once for the group. A message
// sendmmsg refuses has its answers handed to alone (one write each, which
// logs why it failed); a refused group also turns segmentation off for the
// socket, for kernels or devices without it.
func (c *batchConn) write(b *udpBatch, alone func(i int)) {
	hits := b.hits
	c.wstart = c.wstart[:0]
	for j := 0; j < len(hits); {
		i := hits[j]
		size := len(b.outs[i])
		k := j + 1
		if c.gso {
			for k < len(hits) && (k-j+1)*size <= maxGSOBytes &&
				len(b.outs[hits[k]]) == size && c.samePeer(i, hits[k]) {
				k++
			}
		}
		for x := j; x < k; x++ {
			c.wiovs[x].Base = &b.outs[hits[x]][0]
			c.wiovs[x].SetLen(size)
		}
		m := len(c.wstart)
		h := &c.whdrs[m].Hdr
		*h = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&c.rnames[i])), Namelen: c.rhdrs[i].Hdr.Namelen, Iov: &c.wiovs[j]}
		h.SetIovlen(k - j)
		if k-j > 1 {
			cm := c.cmsgs[m*gsoCmsgSpace : (m+1)*gsoCmsgSpace]
			ch := (*unix.Cmsghdr)(unsafe.Pointer(&cm[0]))
			ch.Level, ch.Type = unix.SOL_UDP, unix.UDP_SEGMENT
			ch.SetLen(unix.CmsgLen(2))
			binary.NativeEndian.PutUint16(cm[unix.CmsgLen(0):], uint16(size))
			h.Control = &cm[0]
			h.SetControllen(gsoCmsgSpace)
		}
		c.wstart = append(c.wstart, j)
		j = k
	}
	c.wstart = append(c.wstart, len(hits))
	c.whs = c.whdrs[:len(c.wstart)-1]
	for m := 0; len(c.whs) > 0; {
		c.n, c.errno = 0, 0
		err := c.rc.Write(c.writeF)
		if err == nil && c.errno == 0 && c.n > 0 {
			c.whs, m = c.whs[c.n:], m+c.n
			continue
		}
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if c.wstart[m+1]-c.wstart[m] > 1 {
			c.gso = false
		}
		for x := c.wstart[m]; x < c.wstart[m+1]; x++ {
			alone(hits[x])
		}
		c.whs, m = c.whs[1:], m+1
	}
}

// gsoCmsgSpace is the room for one UDP_SEGMENT control message.
var gsoCmsgSpace = unix.CmsgSpace(2)

// samePeer reports whether queries a and b came from the same sockaddr.
func (c *batchConn) samePeer(a, b int) bool {
	la, lb := c.rhdrs[a].Hdr.Namelen, c.rhdrs[b].Hdr.Namelen
	if la != lb || la > unix.SizeofSockaddrInet6 {
		return false
	}
	na := (*[unix.SizeofSockaddrInet6]byte)(unsafe.Pointer(&c.rnames[a]))
	nb := (*[unix.SizeofSockaddrInet6]byte)(unsafe.Pointer(&c.rnames[b]))
	return string(na[:la]) == string(nb[:lb])
}
