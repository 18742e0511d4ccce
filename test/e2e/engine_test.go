package e2e

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// stopEngine ends a container engine (dockerd, containerd) a test started
// as cmd with its state below dir: SIGTERM, SIGKILL after 20 s, then what
// it left mounted below dir (overlay, shm, netns) is unmounted, deepest
// first, and dir removed. Its containers must be removed before.
func stopEngine(cmd *exec.Cmd, dir string) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
	if data, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		var mounts []string
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
				mounts = append(mounts, f[4])
			}
		}
		for i := len(mounts) - 1; i >= 0; i-- {
			_ = syscall.Unmount(mounts[i], syscall.MNT_DETACH)
		}
	}
	os.RemoveAll(dir)
}
