package containers

import (
	"errors"
	"fmt"
	"github.com/sluice-dev/sluice/pkg/tlsca"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-dev/sluice/pkg/cgroup"
	"golang.org/x/sys/unix"
)

// MountNS returns the inode of process pid's mount namespace.
func MountNS(pid int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/"+strconv.Itoa(pid)+"/ns/mnt", &st); err != nil {
		return 0, fmt.Errorf("mount namespace of process %d: %w", pid, err)
	}
	return st.Ino, nil
}

// ForeignMountNamespaces returns one process (by pid) of each mount
// namespace in the cgroup subtree at path other than the caller's own: the
// containers of a pod, or a container's init and its children. At most max.
func ForeignMountNamespaces(path string, max int) map[uint64]int {
	self, _ := MountNS(os.Getpid())
	out := map[uint64]int{}
	_ = filepath.WalkDir(path, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() || len(out) >= max {
			return nil
		}
		pids, _ := cgroup.PIDs(p)
		for _, pid := range pids {
			ns, err := MountNS(pid)
			if err != nil || ns == self {
				continue
			}
			if _, ok := out[ns]; !ok && len(out) < max {
				out[ns] = pid
			}
		}
		return nil
	})
	return out
}

// MountTrust bind-mounts the file bundle (read-only) over every file of
// tlsca.TrustFiles present in the mount namespace of process pid, and returns the
// paths it mounted over (inside that namespace). root is where the
// container's root file system is in that namespace: "/" for a running
// container, the rootfs path for a runtime hook run before pivot_root.
// Symbolic links are resolved inside root. Nothing changes on disk: the
// mounts vanish with the namespace, or with UnmountTrust.
func MountTrust(pid int, root, bundle string) ([]string, error) {
	if root == "" {
		root = "/"
	}
	// One detached copy of the bundle per possible target, taken in our
	// own namespace (the bundle is not visible in the container's).
	var trees []int
	defer func() {
		for _, fd := range trees {
			unix.Close(fd)
		}
	}()
	for range tlsca.TrustFiles {
		fd, err := unix.OpenTree(unix.AT_FDCWD, bundle, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
		if err != nil {
			return nil, fmt.Errorf("open_tree %s: %w", bundle, err)
		}
		trees = append(trees, fd)
		attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV | unix.MOUNT_ATTR_NOEXEC}
		if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &attr); err != nil {
			return nil, fmt.Errorf("making the bundle mount read-only: %w", err)
		}
	}
	hostPeers, err := sharedPeerGroups("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var mounted []string
	err = inMountNS(pid, func() error {
		seen := map[string]bool{}
		for i, f := range tlsca.TrustFiles {
			target, err := resolveIn(root, f)
			if err != nil || seen[target] {
				continue // absent in this image
			}
			if fi, err := os.Stat(target); err != nil || !fi.Mode().IsRegular() {
				continue
			}
			seen[target] = true
			// A mount that propagates to our own namespace would put the
			// bundle over the host's trust store too.
			if g := peerGroupOf("/proc/thread-self/mountinfo", target); g != "" && hostPeers[g] {
				return fmt.Errorf("%s is on a mount that shares propagation with the host (peer group %s): not mounting over it", target, g)
			}
			if err := unix.MoveMount(trees[i], "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
				return fmt.Errorf("mounting the sandbox bundle over %s: %w", target, err)
			}
			mounted = append(mounted, target)
		}
		return nil
	})
	if err != nil && len(mounted) > 0 {
		_ = UnmountTrust(pid, mounted)
		mounted = nil
	}
	return mounted, err
}

// sharedPeerGroups returns the "shared:N" peer groups of a mountinfo file.
func sharedPeerGroups(mountinfo string) (map[string]bool, error) {
	data, err := os.ReadFile(mountinfo)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, line := range strings.Split(string(data), "\n") {
		if g := sharedField(line); g != "" {
			out[g] = true
		}
	}
	return out, nil
}

// sharedField returns the "shared:N" optional field of a mountinfo line.
func sharedField(line string) string {
	f := strings.Fields(line)
	for i := 6; i < len(f) && f[i] != "-"; i++ {
		if strings.HasPrefix(f[i], "shared:") {
			return f[i]
		}
	}
	return ""
}

// peerGroupOf returns the "shared:N" peer group of the mount path is on
// (the longest mount point that contains it), "" when it is not shared.
func peerGroupOf(mountinfo, path string) string {
	data, err := os.ReadFile(mountinfo)
	if err != nil {
		return ""
	}
	best, group := "", ""
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := cgroup.UnescapeMount(f[4])
		if (path == mp || mp == "/" || strings.HasPrefix(path, mp+"/")) && len(mp) >= len(best) {
			best, group = mp, sharedField(line)
		}
	}
	return group
}

// UnmountTrust removes the mounts MountTrust made at paths in the mount
// namespace of process pid.
func UnmountTrust(pid int, paths []string) error {
	return inMountNS(pid, func() error {
		var errs []error
		for _, p := range paths {
			if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("unmounting %s: %w", p, err))
			}
		}
		return errors.Join(errs...)
	})
}

// inMountNS runs fn on a locked OS thread (never the main thread) that has
// entered the mount namespace of process pid (its root and working
// directory become that namespace's root). The thread is never unlocked, so
// the Go runtime ends it with the goroutine instead of reusing it.
func inMountNS(pid int, fn func() error) error {
	ns, err := os.Open("/proc/" + strconv.Itoa(pid) + "/ns/mnt")
	if err != nil {
		return fmt.Errorf("mount namespace of process %d: %w", pid, err)
	}
	defer ns.Close()
	errc := make(chan error, 1)
	go func() {
		// Never the main thread: it cannot end with the goroutine, and
		// /proc/self shows its namespaces (the whole process's mounts and
		// cgroup paths would then read as the container's).
		for i := 0; ; i++ {
			runtime.LockOSThread()
			if unix.Gettid() != unix.Getpid() {
				break
			}
			runtime.UnlockOSThread()
			if i == 1000 {
				errc <- errors.New("entering a mount namespace: could not get off the main thread")
				return
			}
			time.Sleep(time.Millisecond)
		}
		// setns(CLONE_NEWNS) needs a file system context of our own.
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("unshare(CLONE_FS): %w", err)
			return
		}
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNS); err != nil {
			errc <- fmt.Errorf("entering the mount namespace of process %d: %w", pid, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// resolveIn resolves p (absolute) below root, following symbolic links as
// if root were "/": a link can never lead out of root.
func resolveIn(root, p string) (string, error) {
	cur := "/"
	rest := strings.Split(p, "/")
	for hops := 0; len(rest) > 0; {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			cur = filepath.Dir(cur)
			continue
		}
		next := filepath.Join(cur, c)
		fi, err := os.Lstat(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			cur = next
			continue
		}
		if hops++; hops > 40 {
			return "", fmt.Errorf("%s: too many levels of symbolic links", p)
		}
		link, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if filepath.IsAbs(link) {
			cur = "/"
		}
		rest = append(strings.Split(link, "/"), rest...)
	}
	return filepath.Join(root, cur), nil
}
