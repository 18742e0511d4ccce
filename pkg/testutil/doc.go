// Package testutil holds helpers for sluice's privileged tests: a guard that
// skips without root and kernel support (and fails instead under CI=true),
// throwaway cgroups, bpffs pin directories and network namespaces that are
// removed with t.Cleanup even when the test fails. It also holds the one
// audit test recorder (AuditRecorder) and WaitFor: tests wait on
// conditions, bounded by WaitTimeout, never on fixed sleeps.
package testutil
