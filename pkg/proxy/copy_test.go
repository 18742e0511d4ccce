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
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
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
