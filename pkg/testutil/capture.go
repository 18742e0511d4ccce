package testutil

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// NetnsPair is two throwaway network namespaces joined by a veth pair:
// Near (where a test runs its sandbox) and Far (where it captures). Both
// ends carry an IPv4 and an IPv6 address (no DAD) and are up.
type NetnsPair struct {
	Near, Far     string // namespace names, for `ip netns exec`
	NearIf, FarIf string // veth ends
	Near4, Far4   string // 10.77.0.1, 10.77.0.2
	Near6, Far6   string // fd77::1, fd77::2
}

// VethPair creates a NetnsPair and removes it when the test ends.
func VethPair(t testing.TB) *NetnsPair {
	t.Helper()
	p := &NetnsPair{Near: Netns(t), Far: Netns(t), NearIf: RandomName("sn"), FarIf: RandomName("sf"),
		Near4: "10.77.0.1", Far4: "10.77.0.2", Near6: "fd77::1", Far6: "fd77::2"}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	run("link", "add", p.NearIf, "netns", p.Near, "type", "veth", "peer", "name", p.FarIf, "netns", p.Far)
	run("-n", p.Near, "addr", "add", p.Near4+"/24", "dev", p.NearIf)
	run("-n", p.Far, "addr", "add", p.Far4+"/24", "dev", p.FarIf)
	run("-n", p.Near, "addr", "add", p.Near6+"/64", "dev", p.NearIf, "nodad")
	run("-n", p.Far, "addr", "add", p.Far6+"/64", "dev", p.FarIf, "nodad")
	run("-n", p.Near, "link", "set", p.NearIf, "up")
	run("-n", p.Far, "link", "set", p.FarIf, "up")
	return p
}

// InNetns runs fn on a thread switched into the named network namespace.
// Sockets fn opens stay in that namespace.
func InNetns(name string, fn func() error) error {
	runtime.LockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer self.Close()
	target, err := os.Open("/run/netns/" + name)
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", name, err)
	}
	ferr := fn()
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: the runtime discards it when the
		// goroutine ends, so no other goroutine runs in the wrong netns.
		return fmt.Errorf("setns back: %w", err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// Capture records every frame that arrives on one interface (AF_PACKET,
// ETH_P_ALL, inbound only), like tcpdump without tcpdump.
type Capture struct {
	fd int
	mu sync.Mutex
	// guarded by mu
	frames [][]byte
}

// CaptureOn starts capturing on ifname inside the named network
// namespace until the test ends.
func CaptureOn(t testing.TB, netns, ifname string) *Capture {
	t.Helper()
	c := &Capture{fd: -1}
	err := InNetns(netns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		proto := int(htons(unix.ETH_P_ALL))
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return fmt.Errorf("AF_PACKET socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("binding AF_PACKET to %s: %w", ifname, err)
		}
		c.fd = fd
		return nil
	})
	if err != nil {
		t.Fatalf("capture on %s in %s: %v", ifname, netns, err)
	}
	_ = unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		buf := make([]byte, 65536)
		for {
			select {
			case <-done:
				return
			default:
			}
			n, from, err := unix.Recvfrom(c.fd, buf, 0)
			if err != nil || n <= 0 {
				continue
			}
			if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
				continue
			}
			c.mu.Lock()
			c.frames = append(c.frames, bytes.Clone(buf[:n]))
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		close(done)
		<-stopped
		unix.Close(c.fd)
	})
	return c
}

// Count returns how many captured frames contain marker.
func (c *Capture) Count(marker []byte) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, f := range c.frames {
		if bytes.Contains(f, marker) {
			n++
		}
	}
	return n
}

func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}
