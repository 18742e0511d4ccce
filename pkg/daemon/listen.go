package daemon

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// listeners are one sandbox's redirect targets. A sandbox with its own
// network namespace (or a fence) has its own proxy on 127.0.0.1:P and
// [::1]:P and resolver on UDP 127.0.0.1:D and [::1]:D; the kernel rewrites
// to the same port number for both families, so both must get it. A sandbox
// of the host namespace shares the daemon's proxy and IPv6 resolver
// (shared.go) and holds only its UDP resolver on 127.0.0.1:D: one
// descriptor (issue #21). TCP DNS goes to the proxy, which hands it to the
// resolver.
type listeners struct {
	proxy4, proxy6 net.Listener // nil when shared
	dnsUDP4        net.PacketConn
	dnsUDP6        net.PacketConn // nil when shared
	proxyPort      uint16
	dnsPort        uint16
}

func (l *listeners) Close() {
	for _, c := range []net.Listener{l.proxy4, l.proxy6} {
		if c != nil {
			c.Close()
		}
	}
	for _, c := range []net.PacketConn{l.dnsUDP4, l.dnsUDP6} {
		if c != nil {
			c.Close()
		}
	}
}

// openSharedDNS opens the resolver socket of a sandbox that shares the
// daemon's proxy listener on port proxyPort: UDP 127.0.0.1:D, preferDNS
// first (a restarted daemon keeps the kernel's redirect target).
func openSharedDNS(proxyPort, preferDNS uint16) (*listeners, error) {
	l := &listeners{proxyPort: proxyPort}
	var err error
	if preferDNS != 0 {
		l.dnsUDP4, err = net.ListenPacket("udp4", "127.0.0.1:"+strconv.Itoa(int(preferDNS)))
	}
	if l.dnsUDP4 == nil {
		if l.dnsUDP4, err = net.ListenPacket("udp4", "127.0.0.1:0"); err != nil {
			return nil, fmt.Errorf("resolver listener: %w", err)
		}
	}
	l.dnsPort = uint16(l.dnsUDP4.LocalAddr().(*net.UDPAddr).Port)
	return l, nil
}

// openListeners opens the proxy and resolver sockets of one sandbox in the
// calling thread's network namespace. IPv6 listeners are skipped when the
// namespace has no ::1 (the sandbox's IPv6 connects then fail: closed).
// A restarted daemon first tries the ports the sandbox had, so the kernel's
// redirect targets do not change; 0 means any.
func openListeners(preferProxy, preferDNS uint16) (*listeners, error) {
	return openPair(preferProxy, preferDNS, func(l *listeners, p, d uint16) error { return l.open(p, d) })
}

// openPair retries open until the port pair is free in both families.
func openPair(preferProxy, preferDNS uint16, open func(l *listeners, p, d uint16) error) (*listeners, error) {
	l := &listeners{}
	var err error
	if preferProxy != 0 && preferDNS != 0 {
		if err = open(l, preferProxy, preferDNS); err == nil {
			return l, nil
		}
		l.Close()
		*l = listeners{}
	}
	for try := 0; try < 50; try++ {
		l.Close()
		*l = listeners{}
		if err = open(l, 0, 0); err == nil {
			return l, nil
		}
		if !errors.Is(err, errPortTaken) {
			l.Close()
			return nil, err
		}
	}
	// Thousands of sandboxes fill the ephemeral range: bind(0) keeps
	// offering ports whose other family is taken. Try explicit random
	// ports of the range instead.
	lo, hi := ephemeralRange()
	for try := 0; try < 4000; try++ {
		l.Close()
		*l = listeners{}
		p, d := lo+rand.IntN(hi-lo+1), lo+rand.IntN(hi-lo+1)
		if p == d {
			continue
		}
		if err = open(l, uint16(p), uint16(d)); err == nil {
			return l, nil
		}
	}
	l.Close()
	return nil, fmt.Errorf("opening sandbox listeners: no free port pair found: %w", err)
}

// ephemeralRange is net.ipv4.ip_local_port_range (default 32768-60999).
func ephemeralRange() (int, int) {
	lo, hi := 32768, 60999
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lo, hi
	}
	f := strings.Fields(string(b))
	if len(f) == 2 {
		a, err1 := strconv.Atoi(f[0])
		z, err2 := strconv.Atoi(f[1])
		if err1 == nil && err2 == nil && a > 0 && z >= a && z < 65536 {
			return a, z
		}
	}
	return lo, hi
}

var errPortTaken = errors.New("port taken in the other family")

// portErr is errPortTaken for a port in use, else the error itself (out of
// descriptors must not read as a port clash).
func portErr(err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return errPortTaken
	}
	return fmt.Errorf("sandbox listener: %w", err)
}

func (l *listeners) open(proxyPort, dnsPort uint16) error {
	var err error
	l.proxy4, err = net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(int(proxyPort)))
	if err != nil {
		return fmt.Errorf("proxy listener: %w", err)
	}
	l.proxyPort = uint16(l.proxy4.Addr().(*net.TCPAddr).Port)
	v6 := hasIPv6Loopback()
	if v6 {
		if l.proxy6, err = net.Listen("tcp6", "[::1]:"+strconv.Itoa(int(l.proxyPort))); err != nil {
			return portErr(err)
		}
	}
	l.dnsUDP4, err = net.ListenPacket("udp4", "127.0.0.1:"+strconv.Itoa(int(dnsPort)))
	if err != nil {
		return fmt.Errorf("resolver listener: %w", err)
	}
	l.dnsPort = uint16(l.dnsUDP4.LocalAddr().(*net.UDPAddr).Port)
	if v6 {
		if l.dnsUDP6, err = net.ListenPacket("udp6", "[::1]:"+strconv.Itoa(int(l.dnsPort))); err != nil {
			return portErr(err)
		}
	}
	return nil
}

func hasIPv6Loopback() bool {
	c, err := net.ListenPacket("udp6", "[::1]:0")
	if err != nil {
		return false
	}
	c.Close()
	return true
}
