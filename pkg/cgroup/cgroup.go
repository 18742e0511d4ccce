package cgroup

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Mount returns the mount point of the cgroup v2 hierarchy, read from
// /proc/self/mountinfo: /sys/fs/cgroup on unified hosts,
// /sys/fs/cgroup/unified on hybrid ones.
func Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("reading mounts: %w", err)
	}
	defer f.Close()
	return parseMountinfo(f)
}

func parseMountinfo(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		// 41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
		line := sc.Text()
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		if fs := strings.Fields(post); len(fs) == 0 || fs[0] != "cgroup2" {
			continue
		}
		f := strings.Fields(pre)
		if len(f) < 5 {
			continue
		}
		return UnescapeMount(f[4]), nil
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("reading mounts: %w", err)
	}
	return "", errors.New("no cgroup2 filesystem is mounted: mount one (mount -t cgroup2 none /sys/fs/cgroup) or boot with systemd.unified_cgroup_hierarchy=1")
}

// UnescapeMount undoes the octal escapes of a mountinfo path (\040 for a
// space).
func UnescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ID returns the cgroup id of the cgroup directory at path.
func ID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return 0, fmt.Errorf("cgroup %s: not a directory", path)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("cgroup %s: not on a cgroup2 filesystem", path)
	}
	return st.Ino, nil
}

// OfPID returns the cgroup v2 directory of process pid.
func OfPID(pid int) (string, error) {
	mnt, err := Mount()
	if err != nil {
		return "", err
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", fmt.Errorf("process %d: %w", pid, err)
	}
	rel, err := parseProcCgroup(data)
	if err != nil {
		return "", fmt.Errorf("process %d: %w", pid, err)
	}
	return filepath.Join(mnt, rel), nil
}

func parseProcCgroup(data []byte) (string, error) {
	for _, line := range bytes.Split(data, []byte("\n")) {
		// v2 entry: "0::/path"
		if rest, ok := bytes.CutPrefix(line, []byte("0::")); ok {
			return string(rest), nil
		}
	}
	return "", errors.New("no cgroup v2 entry in /proc/PID/cgroup")
}

// Self returns the cgroup v2 directory of the calling process.
func Self() (string, error) { return OfPID(os.Getpid()) }

// Create makes a new cgroup directory below parent, named name.
func Create(parent, name string) (string, error) {
	p := filepath.Join(parent, name)
	if err := os.Mkdir(p, 0o755); err != nil {
		return "", fmt.Errorf("creating cgroup: %w", err)
	}
	return p, nil
}

// PIDs lists the processes in the cgroup at path (not its children).
func PIDs(path string) ([]int, error) {
	data, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(data)) {
		if n, err := strconv.Atoi(f); err == nil {
			pids = append(pids, n)
		}
	}
	return pids, nil
}

// Kill kills every process in the cgroup at path and its descendants, using
// cgroup.kill where the kernel has it (5.14+) and SIGKILL per pid otherwise.
func Kill(path string) error {
	if err := os.WriteFile(filepath.Join(path, "cgroup.kill"), []byte("1"), 0); err == nil {
		return nil
	}
	return filepath.WalkDir(path, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		pids, _ := PIDs(p)
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		return nil
	})
}

// Remove kills what is left in the cgroup at path, then removes it and every
// cgroup below it, waiting up to timeout for the processes to exit.
func Remove(path string, timeout time.Duration) error {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	_ = Kill(path)
	deadline := time.Now().Add(timeout)
	for {
		err := removeTree(path)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("removing cgroup %s: %w", path, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// removeTree removes the cgroup directories below and at path, deepest first.
func removeTree(path string) error {
	entries, err := os.ReadDir(path)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := removeTree(filepath.Join(path, e.Name())); err != nil {
				return err
			}
		}
	}
	return unix.Rmdir(path)
}
