package enforcer

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/testutil"
	"golang.org/x/sys/unix"
)

// startServe starts the "serve" probe in the sandbox cgroup inside the
// network namespace ns and returns the address it bound.
func startServe(t *testing.T, ns, cg, network, addr, msg string) (netip.AddrPort, func() string) {
	t.Helper()
	ready := filepath.Join(t.TempDir(), "ready")
	cmd := exec.Command("ip", "netns", "exec", ns, testutil.ProbeBin(), "-test.run=^$", network+"|"+addr+"|"+msg+"|"+ready)
	cmd.Env = append(os.Environ(), "SLUICE_TEST_PROBE=serve")
	var out testutil.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	fd, err := unix.Open(cg, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(ready)
		if err == nil {
			return netip.MustParseAddrPort(string(b)), func() string { <-done; return strings.TrimSpace(out.String()) }
		}
		select {
		case <-done:
			t.Fatalf("serve probe exited: %s", out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve probe never became ready: %s", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestInboundConnections: a sandbox listens; a peer outside it (the far end
// of a veth pair) connects. Without a listen rule naming the peer, the peer
// receives no byte; with one, it receives the sandbox's data. A loopback
// peer in the sandbox's own network namespace is always served.
func TestInboundConnections(t *testing.T) {
	f := setup(t, false)
	p := testutil.VethPair(t)
	far4 := netip.MustParsePrefix(p.Far4 + "/32")
	cases := []struct {
		name, network, bind string
		listen              []Listen
		fromNear            bool // the peer is a loopback client in the sandbox's netns
		wantLoopback        bool // the bind is moved to loopback
		wantData            bool
	}{
		{"wildcard bind moved to loopback", "tcp4", "0.0.0.0:0", nil, false, true, false},
		{"ipv6 wildcard bind moved to loopback", "tcp6", "[::]:0", nil, false, true, false},
		{"non-loopback bind: accepted peer receives nothing", "tcp4", p.Near4 + ":0", nil, false, false, false},
		{"ipv6 non-loopback bind: accepted peer receives nothing", "tcp6", "[" + p.Near6 + "]:0", nil, false, false, false},
		{"listen rule naming the peer", "tcp4", "0.0.0.0:8080", []Listen{{far4, []uint16{8080}}}, false, false, true},
		{"listen rule naming another range", "tcp4", "0.0.0.0:8081", []Listen{{netip.MustParsePrefix("10.99.0.0/16"), []uint16{8081}}}, false, false, false},
		{"listen rule for another port", "tcp4", p.Near4 + ":8082", []Listen{{far4, []uint16{8083}}}, false, true, false},
		{"loopback peer in the sandbox's netns", "tcp4", "127.0.0.1:0", nil, true, true, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := f.sb.SetListen(c.listen); err != nil {
				t.Fatal(err)
			}
			msg := testutil.RandomName("sluice-inbound-")
			local, result := startServe(t, p.Near, f.cg, c.network, c.bind, msg)
			if got := local.Addr().Unmap().IsLoopback(); got != c.wantLoopback {
				t.Fatalf("bound %s: loopback %v, want %v", local, got, c.wantLoopback)
			}
			target := netip.AddrPortFrom(netip.MustParseAddr(p.Near4), local.Port())
			if c.network == "tcp6" {
				target = netip.AddrPortFrom(netip.MustParseAddr(p.Near6), local.Port())
			}
			ns := p.Far
			if c.fromNear {
				ns, target = p.Near, local
			}
			var conn net.Conn
			err := testutil.InNetns(ns, func() error {
				var err error
				conn, err = net.DialTimeout("tcp", target.String(), 5*time.Second)
				return err
			})
			if c.wantLoopback && !c.fromNear {
				if !errors.Is(err, syscall.ECONNREFUSED) {
					t.Fatalf("dial %s from outside: %v, want connection refused", target, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("dial %s: %v", target, err)
			}
			defer conn.Close()
			if c.wantData {
				conn.SetReadDeadline(time.Now().Add(5 * time.Second))
				got, err := io.ReadAll(conn)
				if string(got) != msg {
					t.Fatalf("peer received %q (%v), want %q", got, err, msg)
				}
				if r := result(); !strings.HasPrefix(r, "ok served") {
					t.Fatalf("serve probe: %s", r)
				}
				return
			}
			// The sandbox accepted, wrote and closed: its data and FIN
			// would be on the wire by the time the probe exits.
			if r := result(); !strings.HasPrefix(r, "ok served") {
				t.Fatalf("serve probe: %s", r)
			}
			conn.SetReadDeadline(time.Now().Add(time.Second))
			got, _ := io.ReadAll(conn)
			if len(got) != 0 {
				t.Fatalf("the peer received %d bytes from the sandbox: %q", len(got), got)
			}
		})
	}
	if err := f.sb.SetListen(nil); err != nil {
		t.Fatal(err)
	}
	rows, err := ReadBlocked(f.e.PinDir())
	if err != nil {
		t.Fatal(err)
	}
	var inbound uint64
	for _, r := range rows {
		if r.Sandbox == f.sb.ID() && r.Reason == ReasonInbound {
			inbound += r.Count
			if r.Dst.Addr().String() != p.Far4 && r.Dst.Addr().String() != p.Far6 {
				t.Errorf("inbound refusal recorded for %s, want the far peer", r.Dst)
			}
		}
	}
	if inbound < 3 {
		t.Fatalf("%d inbound refusals counted, want >= 3 (one per refused connection)", inbound)
	}
}
