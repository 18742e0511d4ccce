package daemon

import (
	"fmt"
	"os"
	"runtime"
	"strconv"

	"github.com/sluice-dev/sluice/pkg/cgroup"
	"golang.org/x/sys/unix"
)

// netnsInode returns the inode of a network namespace file.
func netnsInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("network namespace %s: %w", path, err)
	}
	return st.Ino, nil
}

// netnsOfPID returns /proc/PID/ns/net, or "" when the process shares the
// daemon's network namespace.
func netnsOfPID(pid int) (string, error) {
	p := "/proc/" + strconv.Itoa(pid) + "/ns/net"
	theirs, err := netnsInode(p)
	if err != nil {
		return "", err
	}
	ours, err := netnsInode("/proc/self/ns/net")
	if err != nil {
		return "", err
	}
	if theirs == ours {
		return "", nil
	}
	return p, nil
}

// netnsOfCgroup finds the network namespace of the processes in a cgroup
// (its first member, searching below it too). "" means the daemon's own,
// or an empty cgroup.
func netnsOfCgroup(path string) (string, error) {
	pids, _ := cgroup.PIDs(path)
	if len(pids) == 0 {
		entries, _ := os.ReadDir(path)
		for _, e := range entries {
			if e.IsDir() {
				if ns, err := netnsOfCgroup(path + "/" + e.Name()); err == nil && ns != "" {
					return ns, nil
				}
			}
		}
		return "", nil
	}
	return netnsOfPID(pids[0])
}

// inNetns returns a function that runs fn with the calling goroutine's
// thread switched into the network namespace at path. Sockets opened by fn
// stay in that namespace.
func inNetns(path string) func(fn func() error) error {
	if path == "" {
		return nil
	}
	return func(fn func() error) error {
		target, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("opening network namespace: %w", err)
		}
		defer target.Close()
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			return fmt.Errorf("opening own network namespace: %w", err)
		}
		defer self.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			return fmt.Errorf("entering network namespace %s: %w", path, err)
		}
		ferr := fn()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: it dies with the goroutine instead
			// of serving others in the wrong namespace.
			return fmt.Errorf("returning from network namespace: %w", err)
		}
		runtime.UnlockOSThread()
		return ferr
	}
}
