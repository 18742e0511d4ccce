package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/sluice-dev/sluice/pkg/dnsproxy"
	"github.com/sluice-dev/sluice/pkg/proxy"
)

// Sandboxes of the host network namespace share one proxy listener pair
// (127.0.0.1:P, [::1]:P) and one IPv6 UDP resolver socket ([::1]:P) instead
// of holding five descriptors and five goroutines each (issue #21: 10,000
// sandboxes in a 20,000-descriptor limit). The kernel keys their records by
// sandbox 0 and names the sandbox in the record (enforcer.SandboxConfig.
// Shared); the accept loop here reads the record and hands the connection
// to that sandbox's proxy server, which never asks again. A connection
// with no record (a process outside every sandbox, or a sandbox that
// connected straight to P, which the kernel refuses) is closed unserved.
type sharedListeners struct {
	proxy4, proxy6 net.Listener
	dns6           net.PacketConn // nil without ::1
	port           uint16
	refs           int // sandboxes using them (Runtime.mu)
	cancel         context.CancelFunc
	wg             sync.WaitGroup
}

// openShared opens the shared listeners on prefer (the port the kernel's
// pinned sandboxes already redirect to, after a restart) or any free port
// whose number is free for TCP on both loopbacks and for UDP on ::1.
func openShared(prefer uint16) (*sharedListeners, error) {
	var err error
	for try := 0; try < 50; try++ {
		port := prefer
		if try > 0 || prefer == 0 {
			port = 0
		}
		var l *sharedListeners
		if l, err = tryShared(port); err == nil {
			return l, nil
		}
		if !errors.Is(err, errPortTaken) {
			return nil, err
		}
	}
	return nil, fmt.Errorf("opening the shared proxy listeners: %w", err)
}

func tryShared(port uint16) (*sharedListeners, error) {
	l := &sharedListeners{}
	var err error
	fail := func(err error) (*sharedListeners, error) {
		l.close()
		return nil, err
	}
	if l.proxy4, err = net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(int(port))); err != nil {
		if port != 0 {
			return fail(portErr(err))
		}
		return fail(fmt.Errorf("proxy listener: %w", err))
	}
	l.port = uint16(l.proxy4.Addr().(*net.TCPAddr).Port)
	if hasIPv6Loopback() {
		p := "[::1]:" + strconv.Itoa(int(l.port))
		if l.proxy6, err = net.Listen("tcp6", p); err != nil {
			return fail(portErr(err))
		}
		if l.dns6, err = net.ListenPacket("udp6", p); err != nil {
			return fail(portErr(err))
		}
	}
	return l, nil
}

func (l *sharedListeners) close() {
	for _, c := range []net.Listener{l.proxy4, l.proxy6} {
		if c != nil {
			c.Close()
		}
	}
	if l.dns6 != nil {
		l.dns6.Close()
	}
}

// sharedPort returns the shared listeners' port, opening them and starting
// their accept loops on first use (prefer: see openShared). Each call must
// be matched by a releaseShared: the last one closes them, so a daemon
// whose sandboxes are all detached holds no listener.
func (rt *Runtime) sharedPort(prefer uint16) (uint16, error) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.shared != nil {
		rt.shared.refs++
		return rt.shared.port, nil
	}
	l, err := openShared(prefer)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	for _, ln := range []net.Listener{l.proxy4, l.proxy6} {
		if ln == nil {
			continue
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			rt.acceptShared(ctx, ln)
		}()
	}
	if l.dns6 != nil {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			err := rt.Resolver.ServeShared(ctx, l.dns6, rt.sharedResolver)
			if err != nil && ctx.Err() == nil {
				rt.Log.Error("shared resolver stopped", "err", err)
			}
		}()
	}
	l.refs = 1
	rt.shared = l
	return l.port, nil
}

// releaseShared drops one use of the shared listeners (see sharedPort).
func (rt *Runtime) releaseShared() {
	rt.mu.Lock()
	l := rt.shared
	if l == nil {
		rt.mu.Unlock()
		return
	}
	if l.refs--; l.refs > 0 {
		rt.mu.Unlock()
		return
	}
	rt.shared = nil
	rt.mu.Unlock()
	l.stop()
}

// closeShared closes the shared listeners whatever their uses.
func (rt *Runtime) closeShared() {
	rt.mu.Lock()
	l := rt.shared
	rt.shared = nil
	rt.mu.Unlock()
	if l != nil {
		l.stop()
	}
}

// stop closes the listeners and waits for their loops (the sandboxes'
// connections belong to their own servers).
func (l *sharedListeners) stop() {
	l.cancel()
	l.close()
	l.wg.Wait()
}

// acceptShared hands each connection on ln to the sandbox the kernel's
// record names.
func (rt *Runtime) acceptShared(ctx context.Context, ln net.Listener) {
	err := proxy.AcceptLoop(ln, rt.Log, rt.dispatch)
	if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
		rt.Log.Error("shared proxy listener failed", "err", err)
	}
}

// dispatch reads the kernel's record of c and hands c to its sandbox.
func (rt *Runtime) dispatch(c net.Conn) {
	ta, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok {
		c.Close()
		return
	}
	client := ta.AddrPort()
	o, err := rt.Enforcer.SharedOriginalDst(netip.AddrPortFrom(client.Addr().Unmap(), client.Port()))
	if err != nil {
		rt.Log.Debug("shared proxy: no original destination recorded; closed", "client", client, "err", err)
		c.Close()
		return
	}
	po := &proxy.Origin{Dst: o.Dst, PID: o.PID, Comm: o.Comm, CgroupID: o.CgroupID}
	if s, wait := rt.sharedSandbox(o.Sandbox); s != nil {
		s.proxy.ServeConn(c, po)
	} else if wait != nil {
		// Its Start registered it in the kernel and is still opening its
		// servers: serve it when they are up, as a listener's backlog would.
		go func() {
			t := time.NewTimer(30 * time.Second)
			defer t.Stop()
			select {
			case <-wait:
			case <-t.C:
			}
			if s, _ := rt.sharedSandbox(o.Sandbox); s != nil {
				s.proxy.ServeConn(c, po)
			} else {
				c.Close()
			}
		}()
	} else {
		rt.Log.Debug("shared proxy: the record names no serving sandbox; closed", "sandbox", o.Sandbox)
		c.Close()
	}
}

// sharedSandbox returns the serving shared sandbox with cgroup id id, or a
// channel closed when the Start in progress for it ends.
func (rt *Runtime) sharedSandbox(id uint64) (*Sandbox, <-chan struct{}) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if s, ok := rt.byID[id]; ok && s.shared {
		return s, nil
	}
	return nil, rt.starting[id]
}

// sharedResolver names the sandbox that sent a query to the shared IPv6
// resolver socket from client, from the kernel's record.
func (rt *Runtime) sharedResolver(client netip.AddrPort) *dnsproxy.Sandbox {
	o, ok := rt.Enforcer.SharedDNSOrigin(client.Port())
	if !ok {
		return nil
	}
	if s, _ := rt.sharedSandbox(o.Sandbox); s != nil {
		return s.dns
	}
	return nil
}
