package proxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// copyBufSize is the buffer of one read+write step of the user-space splice.
// 256 KiB moved as much per CPU second as 1 MiB on loopback bulk transfers
// and clearly more than 64 KiB (PERF.md, "User-space splice").
const copyBufSize = 256 << 10

// spliceBufs holds the buffers of copyConn. A buffer is taken only once the
// source is readable and returned after the write, so an idle spliced
// connection holds none.
var spliceBufs = sync.Pool{New: func() any { return new([copyBufSize]byte) }}

// copyConn copies src to dst until src's EOF (nil error) or an error, with
// read(2) and write(2) through a pooled buffer, and returns the bytes
// written to dst.
//
// It replaces io.Copy, which between two *net.TCPConn uses splice(2)
// through a pipe: the sender's pages then reach the receiver by reference,
// and on loopback the receiving client spent 0.2-0.35 CPU seconds more per
// GiB than the splice saved the proxy (why is not pinned down: PERF.md).
// CPU seconds per GiB for client + origin + proxy over 10 interleaved
// rounds (median): splice(2) 2.22, read/write 1.91, direct 1.40 (PERF.md).
func copyConn(dst io.Writer, src net.Conn) (int64, error) {
	sc, ok := src.(syscall.Conn)
	if !ok {
		return copyPlain(dst, src)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return copyPlain(dst, src)
	}
	var total int64
	for {
		var buf *[copyBufSize]byte
		var n int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			buf = spliceBufs.Get().(*[copyBufSize]byte)
			for {
				n, rerr = unix.Read(int(fd), buf[:])
				if rerr != unix.EINTR {
					break
				}
			}
			if rerr == unix.EAGAIN {
				// Wait for readability without holding a buffer.
				spliceBufs.Put(buf)
				buf = nil
				return false
			}
			return true
		})
		if err == nil && rerr != nil {
			err = &net.OpError{Op: "read", Net: "tcp", Addr: src.RemoteAddr(), Err: rerr}
		}
		if err != nil || n <= 0 {
			if buf != nil {
				spliceBufs.Put(buf)
			}
			return total, err // n == 0 without an error: EOF
		}
		w, werr := dst.Write(buf[:n])
		spliceBufs.Put(buf)
		total += int64(w)
		if werr != nil {
			return total, werr
		}
	}
}

// copyPlain is copyConn for a connection without a descriptor (tests'
// net.Pipe, wrapped connections).
func copyPlain(dst io.Writer, src io.Reader) (int64, error) {
	buf := spliceBufs.Get().(*[copyBufSize]byte)
	defer spliceBufs.Put(buf)
	// The wrappers hide ReaderFrom/WriterTo, which would pick splice(2) again.
	n, err := io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, buf[:])
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return n, err
}
