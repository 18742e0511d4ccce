package sandbox

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// KeptCaps is the capability set a root command keeps (bounding, permitted,
// effective): Docker's default set without CAP_NET_RAW and CAP_MKNOD. A
// non-root command has none. Everything else is dropped from the bounding
// set, in particular CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF, CAP_PERFMON,
// CAP_NET_RAW, CAP_SYS_PTRACE, CAP_SYS_MODULE, CAP_SYS_RAWIO, CAP_MKNOD,
// CAP_DAC_READ_SEARCH and CAP_SYS_BOOT.
var KeptCaps = []int{
	unix.CAP_CHOWN, unix.CAP_DAC_OVERRIDE, unix.CAP_FOWNER, unix.CAP_FSETID, unix.CAP_KILL,
	unix.CAP_SETGID, unix.CAP_SETUID, unix.CAP_SETPCAP, unix.CAP_NET_BIND_SERVICE,
	unix.CAP_SYS_CHROOT, unix.CAP_AUDIT_WRITE, unix.CAP_SETFCAP,
}

// ForbiddenCaps must never be held by a sandboxed command (tests check it).
var ForbiddenCaps = []int{
	unix.CAP_SYS_ADMIN, unix.CAP_NET_ADMIN, unix.CAP_BPF, unix.CAP_PERFMON,
	unix.CAP_NET_RAW, unix.CAP_SYS_PTRACE, unix.CAP_SYS_MODULE,
}

func lastCap() int {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			return n
		}
	}
	return unix.CAP_CHECKPOINT_RESTORE
}

// dropCaps limits the calling thread's bounding, permitted, effective and
// inheritable sets to KeptCaps and clears the ambient set. Capabilities are
// per thread: the caller holds runtime.LockOSThread and forks from it.
func dropCaps() error {
	keep := map[int]bool{}
	for _, c := range KeptCaps {
		keep[c] = true
	}
	for c := 0; c <= lastCap(); c++ {
		if keep[c] {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && err != unix.EINVAL {
			return fmt.Errorf("dropping capability %d from the bounding set: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clearing ambient capabilities: %w", err)
	}
	var data [2]unix.CapUserData
	for c := range keep {
		data[c/32].Permitted |= 1 << (uint(c) % 32)
		data[c/32].Effective |= 1 << (uint(c) % 32)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("setting capabilities: %w", err)
	}
	return nil
}
