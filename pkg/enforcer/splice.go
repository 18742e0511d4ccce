package enforcer

import (
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Splicer moves the bytes of spliced connections in the kernel: a sockhash
// and an sk_skb verdict program that redirects what one socket of a pair
// receives to the egress of the other (bpf/splice.c, whose header comment
// argues why no byte is reordered). One Splicer serves every sandbox of a
// daemon.
type Splicer struct {
	mu   sync.Mutex
	objs spliceObjects
	done bool
}

// NewSplicer loads bpf/splice.c and attaches its verdict program to the
// sockhash. An error means the kernel lacks a feature (sockhash, sk_skb
// verdict without a parser: Linux 5.13); callers fall back to the
// user-space splice.
func NewSplicer() (*Splicer, error) {
	s := &Splicer{}
	if err := loadSpliceObjects(&s.objs, nil); err != nil {
		return nil, fmt.Errorf("loading the splice programs: %w", err)
	}
	err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target:  s.objs.Socks.FD(),
		Program: s.objs.SpliceVerdict,
		Attach:  ebpf.AttachSkSKBVerdict,
	})
	if err != nil {
		s.objs.Close()
		return nil, fmt.Errorf("attaching the sk_skb verdict to the sockhash: %w", err)
	}
	return s, nil
}

// ProbeSplice reports whether this kernel can splice in the kernel (for
// sluice doctor): nil, or the reason the user-space splice is used.
func ProbeSplice() error {
	s, err := NewSplicer()
	if err != nil {
		return err
	}
	return s.Close()
}

// Close detaches the program and frees the maps; pairs still spliced stop
// moving bytes (their sockets leave the sockhash with it).
func (s *Splicer) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return nil
	}
	s.done = true
	return s.objs.Close()
}

// SplicePair is one connection spliced in the kernel.
type SplicePair struct {
	s          *Splicer
	cck, uck   uint64 // socket cookies of the client and upstream sockets
	removeOnce sync.Once
}

// ErrSpliceClosed is returned by Add after Close.
var ErrSpliceClosed = errors.New("kernel splice closed")

// Add splices client and up in the kernel. Every byte the proxy already read
// from client must have been written to up before (see bpf/splice.c). On
// error nothing is left in the maps and the caller may splice in user space:
// no byte has moved.
func (s *Splicer) Add(client, up *net.TCPConn) (*SplicePair, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return nil, ErrSpliceClosed
	}
	cfd, cck, err := sockFD(client)
	if err != nil {
		return nil, err
	}
	ufd, uck, err := sockFD(up)
	if err != nil {
		return nil, err
	}
	p := &SplicePair{s: s, cck: cck, uck: uck}
	var zero uint64
	fail := func(err error) (*SplicePair, error) {
		p.remove()
		return nil, err
	}
	for _, kv := range [][2]uint64{{cck, uck}, {uck, cck}} {
		if err := s.objs.Moved.Update(kv[0], zero, ebpf.UpdateAny); err != nil {
			return fail(fmt.Errorf("kernel splice: counters: %w", err))
		}
		if err := s.objs.Peers.Update(kv[0], kv[1], ebpf.UpdateAny); err != nil {
			return fail(fmt.Errorf("kernel splice: peers: %w", err))
		}
	}
	// Both in targets (no program: redirect targets only) before either
	// gets the verdict: no skb can find its peer missing.
	for _, kv := range [][2]uint64{{cck, uint64(cfd)}, {uck, uint64(ufd)}} {
		if err := s.objs.Targets.Update(kv[0], kv[1], ebpf.UpdateNoExist); err != nil {
			return fail(fmt.Errorf("kernel splice: sockhash (targets): %w", err))
		}
	}
	if err := s.objs.Socks.Update(uck, uint64(ufd), ebpf.UpdateNoExist); err != nil {
		return fail(fmt.Errorf("kernel splice: sockhash (upstream): %w", err))
	}
	if err := s.objs.Socks.Update(cck, uint64(cfd), ebpf.UpdateNoExist); err != nil {
		return fail(fmt.Errorf("kernel splice: sockhash (client): %w", err))
	}
	// Run the verdict over what is already queued (see bpf/splice.c, step 4).
	for _, c := range []*net.TCPConn{up, client} {
		if err := kick(c); err != nil {
			return fail(fmt.Errorf("kernel splice: %w", err))
		}
	}
	return p, nil
}

// Moved returns the bytes redirected in the kernel from the client to the
// upstream and back.
func (p *SplicePair) Moved() (fromClient, fromUp uint64) {
	p.s.moved(p.cck, &fromClient)
	p.s.moved(p.uck, &fromUp)
	return fromClient, fromUp
}

// moved reads the counter of one cookie (0 when gone).
func (s *Splicer) moved(cookie uint64, n *uint64) {
	if err := s.objs.Moved.Lookup(cookie, n); err != nil {
		*n = 0
	}
}

// Remove takes the pair out of the maps (idempotent). Its sockets stop being
// spliced; closing them also removes them from the sockhash.
func (p *SplicePair) Remove() { p.removeOnce.Do(p.remove) }

func (p *SplicePair) remove() {
	for _, k := range []uint64{p.cck, p.uck} {
		p.s.objs.Socks.Delete(k)
		p.s.objs.Targets.Delete(k)
		p.s.objs.Peers.Delete(k)
		p.s.objs.Moved.Delete(k)
	}
}

// sockFD returns the descriptor and socket cookie of c. The descriptor is
// only used during Add, while c is open.
func sockFD(c *net.TCPConn) (int, uint64, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, 0, fmt.Errorf("kernel splice: %w", err)
	}
	var fd int
	var ck uint64
	var serr error
	if err := rc.Control(func(f uintptr) {
		fd = int(f)
		ck, serr = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	}); err != nil {
		return 0, 0, fmt.Errorf("kernel splice: %w", err)
	}
	if serr != nil {
		return 0, 0, fmt.Errorf("kernel splice: socket cookie: %w", serr)
	}
	return fd, ck, nil
}

// kick makes the kernel run the psock's data_ready over what c has queued:
// setting SO_RCVLOWAT calls tcp_data_ready().
func kick(c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(f uintptr) {
		serr = unix.SetsockoptInt(int(f), unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("SO_RCVLOWAT: %w", serr)
	}
	return nil
}
