package testutil

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/cgroup"
	"github.com/sluice-dev/sluice/pkg/defaults"
	"golang.org/x/sys/unix"
)

// RequirePrivileged skips the test unless it runs as root on a kernel with
// cgroup v2 and BPF. Under CI=true it fails instead: CI must never skip the
// privileged tests silently.
func RequirePrivileged(t testing.TB) {
	t.Helper()
	reason := ""
	if os.Geteuid() != 0 {
		reason = "needs root (CAP_SYS_ADMIN and CAP_BPF) to load eBPF programs and create cgroups"
	} else if _, err := cgroup.Mount(); err != nil {
		reason = "needs a cgroup v2 mount: " + err.Error()
	} else if _, err := os.Stat(defaults.BPFFS); err != nil {
		reason = "needs bpffs support (/sys/fs/bpf): " + err.Error()
	}
	if reason == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("privileged test cannot run under CI=true: %s", reason)
	}
	t.Skipf("skipping privileged test: %s", reason)
}

// RandomName returns prefix plus 8 random hex characters.
func RandomName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// Cgroup creates a throwaway cgroup below the cgroup2 root and removes it
// (killing whatever is left inside) when the test ends.
func Cgroup(t testing.TB) (path string, id uint64) {
	t.Helper()
	mnt, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	path, err = cgroup.Create(mnt, RandomName("sluice-test-"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cgroup.Remove(path, 5*time.Second); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	id, err = cgroup.ID(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, id
}

// PinDir returns a fresh bpffs directory for a test's pinned maps and links,
// removed when the test ends.
func PinDir(t testing.TB) string {
	t.Helper()
	var fs unix.Statfs_t
	if err := unix.Statfs(defaults.BPFFS, &fs); err != nil || fs.Type != unix.BPF_FS_MAGIC {
		_ = os.MkdirAll(defaults.BPFFS, 0o755)
		if err := unix.Mount("bpffs", defaults.BPFFS, "bpf", 0, "mode=0700"); err != nil {
			t.Fatalf("mounting bpffs: %v", err)
		}
	}
	dir := filepath.Join(defaults.BPFFS, RandomName("sluice-test-"), "v1")
	t.Cleanup(func() { os.RemoveAll(filepath.Dir(dir)) })
	return dir
}

// Netns creates a named network namespace with only loopback up and removes
// it when the test ends. It returns the name (for `ip netns exec`).
func Netns(t testing.TB) string {
	t.Helper()
	name := RandomName("sluice-test-")
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %v: %s", err, out)
	}
	return name
}

// KernelLacks skips the test because the kernel (or host) lacks a feature
// it needs; under CI=true it fails instead, so CI never skips silently.
func KernelLacks(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := "kernel or host lacks a feature this test needs: " + fmt.Sprintf(format, args...)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}
