package testutil

import (
	"net"
	"strings"
	"sync/atomic"
	"testing"
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
			_, _ = conn.Write([]byte("pong\n"))
			conn.Close()
		}
	}()
	return c
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
