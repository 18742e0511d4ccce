// Package blocked reads the kernel's refusal counters (pinned eBPF maps,
// through pkg/enforcer) and names the sandboxes they belong to from the
// records of live `sluice run` sandboxes and the daemon's state directory.
// It works while the daemon is down (`sluice blocked`).
package blocked
