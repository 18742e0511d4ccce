package testutil

import (
	"bytes"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Canary is a loopback listener that must receive nothing: it counts every
// connection or datagram that reaches it.
type Canary struct {
	Addr string
	hits atomic.Int64
}

// Hits returns how many connections or datagrams reached the canary.
func (c *Canary) Hits() int64 { return c.hits.Load() }

// TCPCanary listens on network ("tcp4" or "tcp6") loopback and answers
// "pong" to every connection, counting them.
func TCPCanary(t testing.TB, network string) *Canary {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "tcp6" {
		addr = "[::1]:0"
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	c := &Canary{Addr: ln.Addr().String()}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			c.hits.Add(1)
			go Pong(conn, "pong")
		}
	}()
	return c
}

// Pong answers the tcp probe on conn: it reads the probe's line (up to 10
// s), replies with reply and a newline, and closes conn. Replying and
// closing without reading would race the probe's "ping": a socket closed
// with unread data sends a reset, which can discard the reply before the
// probe reads it (the probe then reports "ok" with nothing).
func Pong(conn net.Conn, reply string) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(probeTimeout))
	buf := make([]byte, 64)
	for {
		n, err := conn.Read(buf)
		if err != nil || bytes.IndexByte(buf[:n], '\n') >= 0 {
			break
		}
	}
	_, _ = conn.Write([]byte(reply + "\n"))
}

// UDPCanary listens on network ("udp4" or "udp6") loopback and counts the
// datagrams it receives.
func UDPCanary(t testing.TB, network string) *Canary {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "udp6" {
		addr = "[::1]:0"
	}
	return UDPCanaryAt(t, addr, &Canary{})
}

// UDPCanaryAt is UDPCanary on a given address.
func UDPCanaryAt(t testing.TB, addr string, c *Canary) *Canary {
	t.Helper()
	network := "udp4"
	if strings.HasPrefix(addr, "[") {
		network = "udp6"
	}
	pc, err := net.ListenPacket(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	c.Addr = pc.LocalAddr().String()
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			c.hits.Add(1)
		}
	}()
	return c
}
