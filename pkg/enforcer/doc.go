// Package enforcer loads sluice's eBPF programs (bpf/sluice.c, compiled by
// bpf2go), attaches them to sandbox cgroups with pinned links, and exposes a
// small API: register a sandbox, allow an address until a time, set static
// ranges, look up a connection's original destination, and read refusal
// events and counters. It is the only package that imports cilium/ebpf.
//
// Invariants: maps and links are pinned under a versioned bpffs directory
// (DefaultPinDir), so enforcement outlives the process that attached it: a
// dead daemon leaves sandboxes redirected to listeners that are gone, and
// their connections fail (closed). A cgroup with programs attached but no
// registration is refused everything; an id that is not registered has no
// allowlist entries (Detach removes them first), which lets an Enforcer keep
// each sandbox's allowlist keys in memory instead of walking the shared map
// (index.go). A sandbox's allowlist is written only by the process that runs
// it. An Enforcer is safe for concurrent use and must be closed.
package enforcer
