package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// KernelSplicer splices a connection pair in the kernel (issue #21; the
// enforcer's sockhash, see bpf/splice.c). nil in Config: the user-space
// splice.
type KernelSplicer interface {
	// Add starts moving the bytes of client and up in the kernel. Every byte
	// read from client must already be written to up. On error nothing has
	// changed and the caller splices in user space.
	Add(client, up *net.TCPConn) (SplicedPair, error)
}

// SplicedPair is one connection spliced in the kernel.
type SplicedPair interface {
	// Moved returns the bytes the kernel redirected from the client to the
	// upstream and back.
	Moved() (fromClient, fromUp uint64)
	// Remove stops splicing (idempotent).
	Remove()
}

// flushTimeout bounds the wait for redirected bytes to reach a socket's send
// queue before its write side is shut down.
const flushTimeout = 10 * time.Second

// kernelSplice splices c and up in the kernel when the Config has a
// KernelSplicer and both are TCP sockets. It returns false, having changed
// nothing, when the caller must splice in user space. peeked bytes were
// already written to up (and counted).
func (s *server) kernelSplice(c, up net.Conn, peeked int, ci *connInfo) bool {
	ks := s.p.cfg.KernelSplice
	if ks == nil {
		return false
	}
	ct, ok1 := c.(*net.TCPConn)
	ut, ok2 := up.(*net.TCPConn)
	if !ok1 || !ok2 {
		return false
	}
	// The kernel hands whole skbs to the verdict program, also one the peek
	// read only in part: read what is queued now (up to an empty receive
	// queue: no skb is left half-read) and send it after the peeked bytes.
	rest, eof, err := drain(ct)
	if len(rest) > 0 {
		n, werr := ut.Write(rest)
		ci.up.Add(int64(n))
		if werr != nil {
			err = werr
		}
	}
	if err != nil {
		ct.Close()
		ut.Close()
		return true
	}
	peeked += len(rest)
	if eof {
		return false // the client is done sending: the user-space splice finishes it
	}
	pair, err := ks.Add(ct, ut)
	if err != nil {
		s.log.Debug("kernel splice unavailable for this connection; splicing in user space", "err", err)
		return false
	}
	defer pair.Remove()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		awaitEOF(ct, ut, func() uint64 { a, _ := pair.Moved(); return uint64(peeked) + a })
	}()
	if awaitEOF(ut, ct, func() uint64 { _, b := pair.Moved(); return b }) {
		// The upstream is done; a client that neither sends nor closes must
		// not pin the connection forever.
		ct.SetReadDeadline(time.Now().Add(s.p.cfg.IdleTimeout))
	}
	wg.Wait()
	a, b := pair.Moved()
	ci.up.Add(int64(a))
	ci.down.Add(int64(b))
	return true
}

// awaitEOF waits for the end of src's stream (its bytes are redirected in
// the kernel: user space only sees EOF or an error), then shuts dst down for
// writing once dst has queued want() bytes, so that the FIN follows the last
// redirected byte. Anything else (reset, timeout, a byte in user space,
// which could no longer be put in order) closes both. It reports whether
// src ended cleanly.
func awaitEOF(src, dst *net.TCPConn, want func() uint64) bool {
	var b [1]byte
	n, err := src.Read(b[:])
	if n > 0 || !errors.Is(err, io.EOF) {
		src.Close()
		dst.Close()
		return false
	}
	deadline := time.Now().Add(flushTimeout)
	for wait := 50 * time.Microsecond; ; wait = min(2*wait, 10*time.Millisecond) {
		q, err := queued(dst)
		if err != nil || time.Now().After(deadline) {
			src.Close()
			dst.Close()
			return false
		}
		if q >= want() {
			break
		}
		time.Sleep(wait) // the psock worker is sending: poll, bounded
	}
	if err := dst.CloseWrite(); err != nil && !errors.Is(err, os.ErrClosed) {
		src.Close()
		dst.Close()
		return false
	}
	return true
}

// queued returns the bytes ever queued for sending on c: acknowledged
// (tcpi_bytes_acked) plus still in the send queue (SIOCOUTQ).
func queued(c *net.TCPConn) (uint64, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var acked uint64
	var outq int
	var serr error
	if err := rc.Control(func(f uintptr) {
		var ti *unix.TCPInfo
		if ti, serr = unix.GetsockoptTCPInfo(int(f), unix.IPPROTO_TCP, unix.TCP_INFO); serr != nil {
			return
		}
		acked = ti.Bytes_acked
		outq, serr = unix.IoctlGetInt(int(f), unix.TIOCOUTQ)
	}); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, fmt.Errorf("send queue: %w", serr)
	}
	return acked + uint64(outq), nil
}

// drain reads what c has queued without waiting, until its receive queue is
// empty (EAGAIN) or the stream ended.
func drain(c *net.TCPConn) (data []byte, eof bool, err error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, false, err
	}
	buf := make([]byte, 64<<10)
	var rerr error
	if err := rc.Read(func(f uintptr) bool {
		for {
			n, _, e := unix.Recvfrom(int(f), buf, unix.MSG_DONTWAIT)
			switch {
			case e == unix.EINTR:
				continue
			case e == unix.EAGAIN:
				return true
			case e != nil:
				rerr = e
				return true
			case n == 0:
				eof = true
				return true
			}
			data = append(data, buf[:n]...)
		}
	}); err != nil {
		return nil, false, err
	}
	return data, eof, rerr
}
