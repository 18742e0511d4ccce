// Package runner runs one command in a one-shot sandbox (`sluice run`):
// a fresh cgroup below sluice's own, the shared components of pkg/daemon
// (Runtime) for it alone, the sandbox init of pkg/sandbox, and the records
// in the run directory that `sluice list` and `sluice blocked` read.
//
// Invariants: everything Run creates (cgroup, kernel registration,
// listeners, CA bundle, run records) is removed before it returns, also
// when the command is killed or sluice is signalled: Run handles
// SIGINT, SIGTERM, SIGHUP and SIGQUIT before it creates anything, stops the
// setup on one, and passes them on once the command runs. Run is meant to be
// called once per process: it scrubs the process's own environment and
// makes it undumpable.
package runner
