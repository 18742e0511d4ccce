package sandbox

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Allowed socket families; socket() and socketpair() with any other domain
// fail with EAFNOSUPPORT.
var allowedFamilies = []uint32{unix.AF_UNIX, unix.AF_INET, unix.AF_INET6, unix.AF_NETLINK}

// seccompArch is the audit arch and syscall numbers the filter checks; a
// syscall made under any other arch (i386 through int 0x80, x32) is refused.
type seccompArch struct {
	audit                                       uint32
	socket, socketpair, ioctl, clone, unshare   uint32
	clone3, bpf, ioUringSetup, ioUringEnter     uint32
	ioUringRegister, keyctl, addKey, requestKey uint32
	perfEventOpen                               uint32
	x32                                         bool // refuse nr >= __X32_SYSCALL_BIT
}

func archFilter() (seccompArch, error) {
	switch runtime.GOARCH {
	case "amd64":
		return seccompArch{audit: unix.AUDIT_ARCH_X86_64, socket: 41, socketpair: 53, ioctl: 16, clone: 56,
			unshare: 272, clone3: 435, bpf: 321, ioUringSetup: 425, ioUringEnter: 426, ioUringRegister: 427,
			keyctl: 250, addKey: 248, requestKey: 249, perfEventOpen: 298, x32: true}, nil
	case "arm64":
		return seccompArch{audit: unix.AUDIT_ARCH_AARCH64, socket: 198, socketpair: 199, ioctl: 29, clone: 220,
			unshare: 97, clone3: 435, bpf: 280, ioUringSetup: 425, ioUringEnter: 426, ioUringRegister: 427,
			keyctl: 219, addKey: 217, requestKey: 218, perfEventOpen: 241}, nil
	}
	return seccompArch{}, fmt.Errorf("no seccomp filter for %s", runtime.GOARCH)
}

const (
	offNr   = 0
	offArch = 4
	offArg0 = 16 // low 32 bits of args[0] (little endian)
	offArg1 = 24
)

func retErrno(e unix.Errno) uint32 { return unix.SECCOMP_RET_ERRNO | uint32(e)&unix.SECCOMP_RET_DATA }

// Filter returns the classic BPF program installed before the command is
// executed:
//
//   - a foreign audit arch, or an x32 syscall number: EPERM
//   - socket, socketpair: domains other than unix, inet, inet6, netlink:
//     EAFNOSUPPORT (AF_PACKET, AF_VSOCK, AF_ALG, AF_XDP, ...)
//   - io_uring_*: EPERM (IORING_OP_SOCKET would bypass the socket check)
//   - bpf, perf_event_open: EPERM (pinned programs and links are out of
//     reach anyway; perf events read kernel state)
//   - clone and unshare with CLONE_NEWUSER: EPERM (a user namespace gives
//     back every capability inside it); clone3: ENOSYS, so libc falls back
//     to clone, whose flags the filter can read
//   - keyctl, add_key, request_key: EPERM (the session keyring is the
//     invoking user's)
//   - ioctl TIOCSTI, TIOCLINUX: EPERM (typing into the caller's terminal)
//
// Everything else is allowed.
func Filter() ([]unix.SockFilter, error) {
	a, err := archFilter()
	if err != nil {
		return nil, err
	}
	allow := uint32(unix.SECCOMP_RET_ALLOW)
	var p []unix.SockFilter
	stmt := func(code uint16, k uint32) { p = append(p, unix.SockFilter{Code: code, K: k}) }
	// jeq k → skip "jt" instructions when equal.
	jump := func(code uint16, k uint32, jt, jf uint8) {
		p = append(p, unix.SockFilter{Code: code, Jt: jt, Jf: jf, K: k})
	}
	const (
		ld   = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq  = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		jge  = unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K
		jset = unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K
		ret  = unix.BPF_RET | unix.BPF_K
	)
	stmt(ld, offArch)
	jump(jeq, a.audit, 1, 0)
	stmt(ret, retErrno(unix.EPERM))
	stmt(ld, offNr)
	if a.x32 {
		jump(jge, 0x40000000, 0, 1)
		stmt(ret, retErrno(unix.EPERM))
	}
	// Syscalls refused outright.
	for _, nr := range []uint32{a.ioUringSetup, a.ioUringEnter, a.ioUringRegister, a.bpf, a.perfEventOpen, a.keyctl, a.addKey, a.requestKey} {
		jump(jeq, nr, 0, 1)
		stmt(ret, retErrno(unix.EPERM))
	}
	jump(jeq, a.clone3, 0, 1)
	stmt(ret, retErrno(unix.ENOSYS))
	// socket, socketpair: check the domain.
	jump(jeq, a.socket, 1, 0)
	jump(jeq, a.socketpair, 0, uint8(3+len(allowedFamilies)))
	stmt(ld, offArg0)
	for i, f := range allowedFamilies {
		jump(jeq, f, uint8(len(allowedFamilies)-i), 0)
	}
	stmt(ret, retErrno(unix.EAFNOSUPPORT))
	stmt(ret, allow)
	// clone (flags in args[0] on x86_64 and arm64) and unshare (args[0]).
	jump(jeq, a.clone, 1, 0)
	jump(jeq, a.unshare, 0, 4)
	stmt(ld, offArg0)
	jump(jset, unix.CLONE_NEWUSER, 0, 1)
	stmt(ret, retErrno(unix.EPERM))
	stmt(ret, allow)
	// ioctl: the request is args[1] (an unsigned int).
	jump(jeq, a.ioctl, 0, 4)
	stmt(ld, offArg1)
	jump(jeq, unix.TIOCSTI, 1, 0)
	jump(jeq, unix.TIOCLINUX, 0, 1)
	stmt(ret, retErrno(unix.EPERM))
	stmt(ret, allow)
	return p, nil
}

// installFilter sets no_new_privs and installs Filter on the calling
// thread (the one that then forks the command: the caller must hold
// runtime.LockOSThread).
func installFilter() error {
	prog, err := Filter()
	if err != nil {
		return err
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("setting no_new_privs: %w", err)
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if _, _, e := unix.RawSyscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, 0, uintptr(unsafe.Pointer(&fprog))); e != 0 {
		return fmt.Errorf("installing the seccomp filter: %w", e)
	}
	return nil
}
