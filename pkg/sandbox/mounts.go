package sandbox

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// setupMounts builds the sandbox's view of the host in its private mount
// namespace. Order matters: every mount is made while the init still holds
// CAP_SYS_ADMIN; the command gets none, so it cannot undo any of it.
func setupMounts(cfg *Config) error {
	// Nothing we do propagates to the host, nothing the host does later
	// propagates in.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making / private: %w", err)
	}
	// A fresh /proc for the new PID namespace: sluice and the host's other
	// processes are not in it.
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mounting /proc: %w", err)
	}
	if err := maskProc(); err != nil {
		return err
	}
	if err := setupDev(cfg.Scratch); err != nil {
		return err
	}
	mounts, err := readMountinfo()
	if err != nil {
		return err
	}
	// cgroupfs: a fresh cgroup2 rooted at the sandbox cgroup (the cgroup
	// namespace), and nothing of the host's hierarchies.
	if err := setupCgroup(cfg.Cgroup2, mounts); err != nil {
		return err
	}
	// bpffs, debugfs, tracefs, securityfs, ... and the directories Hide
	// names: empty and read-only.
	for _, m := range mounts {
		switch m.fstype {
		case "bpf", "debugfs", "tracefs", "securityfs", "configfs", "pstore", "efivarfs", "fusectl", "binfmt_misc":
			if err := hideDir(m.point); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	hidden := map[string]bool{}
	for _, d := range cfg.Hide {
		if hidden[d] {
			continue
		}
		hidden[d] = true
		if err := hideDir(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	for _, b := range cfg.Binds {
		if err := bindFile(b.Source, b.Target); err != nil {
			return err
		}
	}
	// /sys and everything below it read-only, except the sandbox's own
	// cgroup2 (nested cgroups stay possible, and enforced).
	mounts, err = readMountinfo()
	if err != nil {
		return err
	}
	for _, m := range mounts {
		if m.point != "/sys" && !strings.HasPrefix(m.point, "/sys/") {
			continue
		}
		if m.fstype == "cgroup2" {
			continue
		}
		if err := remountRO(m.point); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

type mountEntry struct{ point, fstype string }

func readMountinfo() ([]mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mountEntry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, x := range fields {
			if x == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || len(fields) < 5 || sep+1 >= len(fields) {
			continue
		}
		out = append(out, mountEntry{point: unescape(fields[4]), fstype: fields[sep+1]})
	}
	// In order of appearance: a parent comes before what is mounted on it.
	return out, sc.Err()
}

func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + byte(c-'0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

const roFlags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_RDONLY

func remountRO(p string) error {
	// A mount point is remounted in place (this namespace's copy); a
	// directory inside a mount (/proc/sys) is first bound onto itself. The
	// read-only flag is then the bind mount's own, which only
	// CAP_SYS_ADMIN can change back.
	err := unix.Mount("", p, "", unix.MS_REMOUNT|unix.MS_BIND|roFlags, "")
	if err == nil {
		return nil
	}
	if _, serr := os.Lstat(p); serr != nil {
		return serr
	}
	if err := unix.Mount(p, p, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("binding %s: %w", p, err)
	}
	if err := unix.Mount("", p, "", unix.MS_REMOUNT|unix.MS_BIND|roFlags, ""); err != nil {
		return fmt.Errorf("remounting %s read-only: %w", p, err)
	}
	return nil
}

// hideDir covers a directory with an empty read-only tmpfs.
func hideDir(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return bindFile("/dev/null", p)
	}
	if err := unix.Mount("tmpfs", p, "tmpfs", roFlags, "size=4k,mode=0555"); err != nil {
		return fmt.Errorf("hiding %s: %w", p, err)
	}
	return nil
}

// bindFile mounts src read-only over the existing file dst (symlinks in
// dst are followed: the file they name is covered).
func bindFile(src, dst string) error {
	if _, err := os.Stat(dst); err != nil {
		return nil // nothing to cover
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("binding %s over %s: %w", src, dst, err)
	}
	if err := unix.Mount("", dst, "", unix.MS_REMOUNT|unix.MS_BIND|roFlags, ""); err != nil {
		return fmt.Errorf("remounting %s read-only: %w", dst, err)
	}
	return nil
}

// maskProc makes the kernel knobs under /proc read-only and hides what
// leaks host state (as Docker does).
func maskProc() error {
	for _, p := range []string{"/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs"} {
		if err := remountRO(p); err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, unix.ENOENT) {
			return err
		}
	}
	for _, p := range []string{"/proc/kcore", "/proc/keys", "/proc/key-users", "/proc/timer_list", "/proc/sched_debug",
		"/proc/latency_stats", "/proc/kpagecount", "/proc/kpageflags", "/proc/kpagecgroup", "/proc/acpi", "/proc/scsi"} {
		if err := hideDir(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// setupDev replaces /dev by a small tmpfs: the harmless character devices
// of the host, a private devpts instance and a fresh /dev/shm. Disks,
// /dev/mem, /dev/kmsg and the like are not there.
func setupDev(scratch string) error {
	if scratch == "" {
		return errors.New("no scratch directory for /dev")
	}
	dev := filepath.Join(scratch, "dev")
	if err := os.Mkdir(dev, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	if err := unix.Mount("tmpfs", dev, "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0755,size=64k"); err != nil {
		return fmt.Errorf("mounting the sandbox /dev: %w", err)
	}
	for _, n := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
		src := "/dev/" + n
		if _, err := os.Stat(src); err != nil {
			continue
		}
		dst := filepath.Join(dev, n)
		if err := os.WriteFile(dst, nil, 0o666); err != nil {
			return err
		}
		if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("binding %s: %w", src, err)
		}
	}
	for _, d := range []string{"pts", "shm", "mqueue"} {
		if err := os.Mkdir(filepath.Join(dev, d), 0o755); err != nil {
			return err
		}
	}
	if err := unix.Mount("devpts", filepath.Join(dev, "pts"), "devpts", unix.MS_NOSUID|unix.MS_NOEXEC,
		"newinstance,ptmxmode=0666,mode=0620"); err != nil {
		return fmt.Errorf("mounting devpts: %w", err)
	}
	if err := unix.Mount("shm", filepath.Join(dev, "shm"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777,size=65536k"); err != nil {
		return fmt.Errorf("mounting /dev/shm: %w", err)
	}
	links := map[string]string{"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
		"stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"}
	names := make([]string, 0, len(links))
	for n := range links {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := os.Symlink(links[n], filepath.Join(dev, n)); err != nil {
			return err
		}
	}
	if err := unix.Mount(dev, "/dev", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("moving the sandbox /dev in place: %w", err)
	}
	return nil
}

// setupCgroup covers every cgroup hierarchy of the host and mounts a fresh
// cgroup2 (rooted at the sandbox cgroup, by the cgroup namespace) where the
// host has its cgroup2.
func setupCgroup(cg2 string, mounts []mountEntry) error {
	const base = "/sys/fs/cgroup"
	// Any cgroup mount outside /sys/fs/cgroup: hidden.
	for _, m := range mounts {
		if (m.fstype == "cgroup" || m.fstype == "cgroup2") && m.point != base && !strings.HasPrefix(m.point, base+"/") {
			if err := hideDir(m.point); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	if _, err := os.Stat(base); err != nil {
		return nil
	}
	flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	if cg2 == base || cg2 == "" {
		if err := unix.Mount("cgroup2", base, "cgroup2", flags, ""); err != nil {
			return fmt.Errorf("mounting the sandbox cgroup2: %w", err)
		}
		return nil
	}
	// Hybrid: a tmpfs over the v1 controllers, with the cgroup2 mount point
	// (unified) in it.
	if err := unix.Mount("tmpfs", base, "tmpfs", flags, "mode=0755,size=4k"); err != nil {
		return fmt.Errorf("covering %s: %w", base, err)
	}
	if strings.HasPrefix(cg2, base+"/") {
		if err := os.MkdirAll(cg2, 0o755); err != nil {
			return err
		}
	}
	if err := unix.Mount("", base, "", unix.MS_REMOUNT|roFlags, "mode=0755,size=4k"); err != nil {
		return fmt.Errorf("remounting %s read-only: %w", base, err)
	}
	if _, err := os.Stat(cg2); err == nil {
		if err := unix.Mount("cgroup2", cg2, "cgroup2", flags, ""); err != nil {
			return fmt.Errorf("mounting the sandbox cgroup2 at %s: %w", cg2, err)
		}
	}
	return nil
}
