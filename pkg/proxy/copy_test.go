package proxy

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { a.Close(); r.c.Close() })
	return a.(*net.TCPConn), r.c.(*net.TCPConn)
}

// TestCopyConn: every byte arrives in order (more than one buffer), EOF
// ends the copy with a nil error, and the byte count is exact.
func TestCopyConn(t *testing.T) {
	t.Parallel()
	srcW, src := tcpPair(t)
	dst, dstR := tcpPair(t)
	msg := make([]byte, 3*copyBufSize+12345)
	rand.Read(msg)
	go func() {
		srcW.Write(msg)
		srcW.CloseWrite()
	}()
	type res struct {
		n   int64
		err error
	}
	done := make(chan res, 1)
	go func() {
		n, err := copyConn(dst, src)
		dst.CloseWrite()
		done <- res{n, err}
	}()
	got, err := io.ReadAll(dstR)
	if err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || r.n != int64(len(msg)) {
		t.Fatalf("copyConn = %d, %v; want %d, nil", r.n, r.err, len(msg))
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("received %d bytes, not the %d sent", len(got), len(msg))
	}
}

// TestCopyConnDeadline: a read deadline on the source (the splice's idle
// timeout) ends a copy that waits for bytes, and a close from another
// goroutine does too.
func TestCopyConnDeadline(t *testing.T) {
	t.Parallel()
	_, src := tcpPair(t)
	dst, _ := tcpPair(t)
	src.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := copyConn(dst, src); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("copyConn after the deadline: %v, want a deadline error", err)
	}

	_, src2 := tcpPair(t)
	done := make(chan error, 1)
	go func() {
		_, err := copyConn(dst, src2)
		done <- err
	}()
	src2.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("copyConn after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("copyConn did not return after its source was closed")
	}
}

// TestCopyConnPlain: a connection without a descriptor (net.Pipe) is copied
// too.
func TestCopyConnPlain(t *testing.T) {
	t.Parallel()
	a, b := net.Pipe()
	var out bytes.Buffer
	go func() {
		a.Write([]byte("hello"))
		a.Close()
	}()
	n, err := copyConn(&out, b)
	if err != nil || n != 5 || out.String() != "hello" {
		t.Fatalf("copyConn = %d, %v, %q", n, err, out.String())
	}
}

// BenchmarkSpliceCopy compares the user-space splice's copy (copyConn) with
// io.Copy (splice(2) between two *net.TCPConn) on loopback: a writer sends
// 1 MiB writes into one connection, the proxy copies them to a second, a
// reader drains that with 16 KiB reads (a TLS client's record size).
// cpu-s/GiB is the whole process's CPU (writer, proxy, reader) per GiB
// moved, until the reader has every byte.
func BenchmarkSpliceCopy(b *testing.B) {
	for _, tt := range []struct {
		name string
		copy func(dst, src net.Conn) (int64, error)
	}{
		{"copyConn", func(dst, src net.Conn) (int64, error) { return copyConn(dst, src) }},
		{"io.Copy", func(dst, src net.Conn) (int64, error) { return io.Copy(dst, src) }},
	} {
		b.Run(tt.name, func(b *testing.B) {
			w, src := tcpPair(b)
			dst, r := tcpPair(b)
			go func() {
				tt.copy(dst, src)
				dst.CloseWrite()
			}()
			done := make(chan int64, 1)
			go func() {
				n, _ := io.CopyBuffer(io.Discard, struct{ io.Reader }{r}, make([]byte, 16<<10))
				done <- n
			}()
			const chunk = 1 << 20
			msg := make([]byte, chunk)
			b.SetBytes(chunk)
			c0 := cpuTime(b)
			var sent int64
			for b.Loop() {
				n, err := w.Write(msg)
				sent += int64(n)
				if err != nil {
					b.Fatal(err)
				}
			}
			w.CloseWrite()
			if got := <-done; got != sent {
				b.Fatalf("reader got %d of %d bytes", got, sent)
			}
			b.ReportMetric((cpuTime(b)-c0).Seconds()/(float64(sent)/(1<<30)), "cpu-s/GiB")
		})
	}
}
