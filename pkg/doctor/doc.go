// Package doctor checks that a host can run sluice: kernel version, the bpf
// syscall, cgroup v2 and its mount mode (unified or hybrid), bpffs,
// capabilities, and the daemon's control socket. Every failed check carries
// the fix to apply.
//
// Every input is injectable (Env): the mountinfo and status files, the
// bpffs path, the kernel release, the bpf probe and the daemon probe, so
// tests can simulate a host. Run performs no writes; it is safe to call
// concurrently with distinct Envs.
package doctor
