package testutil

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// probeEnv selects the probe mode of a test binary re-executed inside a
// sandbox cgroup.
const probeEnv = "SLUICE_TEST_PROBE"

// probeTimeout bounds a probe's connect and its wait for a reply.
const probeTimeout = 10 * time.Second

// MaybeRunProbe must be called first in TestMain of packages that use
// RunProbe. In a re-executed child it performs the probe, prints the result
// on stdout and exits; otherwise it returns.
func MaybeRunProbe() {
	mode := os.Getenv(probeEnv)
	if mode == "" {
		return
	}
	fmt.Println(runProbe(mode, os.Args[len(os.Args)-1]))
	os.Exit(0)
}

// runProbe performs one network action and describes the outcome:
// "ok <reply>" or "error <errno name>".
func runProbe(mode, target string) string {
	switch mode {
	case "tcp":
		// A refusal is immediate (EPERM, or EOF from the proxy); the
		// generous timeouts only matter for an allowed connection through a
		// daemon slowed by a loaded machine (a CI run once missed 3 s).
		c, err := net.DialTimeout("tcp", target, probeTimeout)
		if err != nil {
			return "error " + errnoName(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(probeTimeout))
		_, _ = c.Write([]byte("ping\n"))
		buf := make([]byte, 256)
		n, rerr := c.Read(buf)
		if n == 0 && errors.Is(rerr, os.ErrDeadlineExceeded) {
			return "ok [no reply in " + probeTimeout.String() + "]"
		}
		return "ok " + strings.TrimSpace(string(buf[:n]))
	case "bindtcp": // bind a specific source address first, then connect
		d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 5)}}
		if strings.HasPrefix(target, "[") {
			d.LocalAddr = &net.TCPAddr{IP: net.IPv6loopback}
		}
		c, err := d.Dial("tcp", target)
		if err != nil {
			return "error " + errnoName(err)
		}
		c.Close()
		return "ok connected"
	case "udp": // unconnected sendto
		ap, err := netip.ParseAddrPort(target)
		if err != nil {
			return "error " + err.Error()
		}
		network := "udp4"
		if ap.Addr().Is4In6() {
			network = "udp" // dual-stack v6 socket
		} else if ap.Addr().Is6() {
			network = "udp6"
		}
		c, err := net.ListenUDP(network, nil)
		if err != nil {
			return "error " + errnoName(err)
		}
		defer c.Close()
		if _, err := c.WriteToUDPAddrPort([]byte("ping"), ap); err != nil {
			return "error " + errnoName(err)
		}
		return "ok sent"
	case "udpconn": // connect + send
		c, err := net.Dial("udp", target)
		if err != nil {
			return "error " + errnoName(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("ping")); err != nil {
			return "error " + errnoName(err)
		}
		return "ok sent"
	case "tfo": // sendto(MSG_FASTOPEN) on a fresh TCP socket
		ap, err := netip.ParseAddrPort(target)
		if err != nil {
			return "error " + err.Error()
		}
		if ap.Addr().Is4() {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
			if err != nil {
				return "error " + errnoName(err)
			}
			defer unix.Close(fd)
			sa := &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
			if err := unix.Sendto(fd, []byte("ping\n"), unix.MSG_FASTOPEN, sa); err != nil {
				return "error " + errnoName(err)
			}
			return "ok sent"
		}
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM, 0)
		if err != nil {
			return "error " + errnoName(err)
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
		if err := unix.Sendto(fd, []byte("ping\n"), unix.MSG_FASTOPEN, sa); err != nil {
			return "error " + errnoName(err)
		}
		return "ok sent"
	case "raw":
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
		if err != nil {
			return "error " + errnoName(err)
		}
		unix.Close(fd)
		return "ok socket"
	case "mptcp":
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 262)
		if err != nil {
			return "error " + errnoName(err)
		}
		unix.Close(fd)
		return "ok socket"
	}
	if out, ok := attackProbe(mode, target); ok {
		return out
	}
	if out, ok := routeProbe(mode, target); ok {
		return out
	}
	if out, ok := listenProbe(mode, target); ok {
		return out
	}
	if out, ok := fenceProbe(mode, target); ok {
		return out
	}
	if out, ok := headsProbe(mode, target); ok {
		return out
	}
	return "error unknown probe " + mode
}

func errnoName(err error) string {
	var en syscall.Errno
	if errors.As(err, &en) {
		switch en {
		case syscall.EPERM:
			return "EPERM"
		case syscall.ECONNREFUSED:
			return "ECONNREFUSED"
		case syscall.EACCES:
			return "EACCES"
		}
		return en.Error()
	}
	return err.Error()
}

// ProbeBin is the program that performs probes: $SLUICE_PROBE_BIN (the
// plain build of ./test/probe that make test passes), else the test binary
// itself (re-executed; MaybeRunProbe in its TestMain). Either takes
// "-test.run=^$ TARGET" and the mode in $SLUICE_TEST_PROBE.
func ProbeBin() string {
	if p := os.Getenv("SLUICE_PROBE_BIN"); p != "" {
		return p
	}
	return os.Args[0]
}

// RunProbe runs the probe (ProbeBin) inside the cgroup at cgPath and
// returns the probe's one-line outcome.
func RunProbe(t testing.TB, cgPath, mode, target string) string {
	t.Helper()
	cmd := exec.Command(ProbeBin(), "-test.run=^$", target)
	cmd.Env = append(os.Environ(), probeEnv+"="+mode)
	out, err := RunInCgroup(cmd, cgPath)
	if err != nil {
		t.Fatalf("probe %s %s: %v: %s", mode, target, err, out)
	}
	return strings.TrimSpace(string(out))
}

// RunInCgroup runs cmd with its process started directly inside the cgroup
// (clone3 CLONE_INTO_CGROUP) and returns its combined output.
func RunInCgroup(cmd *exec.Cmd, cgPath string) ([]byte, error) {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := StartInCgroup(cmd, cgPath); err != nil {
		return nil, err
	}
	err := cmd.Wait()
	return out.Bytes(), err
}

// StartInCgroup starts cmd with its process directly inside the cgroup
// (clone3 CLONE_INTO_CGROUP), so it is never anywhere else; the caller
// waits for it.
func StartInCgroup(cmd *exec.Cmd, cgPath string) error {
	fd, err := unix.Open(cgPath, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = fd
	return cmd.Start()
}
