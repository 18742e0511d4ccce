// Package sandbox is the process boundary of `sluice run`: the command runs
// below a small init process (sluice re-executed as `sluice __sandbox-init`)
// that is pid 1 of its own PID namespace, in its own mount and cgroup
// namespaces, with the host's trust files replaced by the sandbox bundle,
// a reduced capability set, no_new_privs and a seccomp filter.
//
// Invariants:
//   - Start places the init directly in the sandbox cgroup (clone3
//     CLONE_INTO_CGROUP); nothing of the sandbox ever runs outside it.
//   - The command never holds CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF,
//     CAP_PERFMON, CAP_NET_RAW, CAP_SYS_PTRACE or CAP_SYS_MODULE, even as
//     root, and cannot regain them (bounding set, no_new_privs).
//   - socket() succeeds only for AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK.
//   - No secret value is ever part of Config: the init never sees one.
//
// The init must be entered before anything else runs in the process:
// cmd/sluice calls MaybeInit first thing in main.
package sandbox
