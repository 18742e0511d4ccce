// Package statedir owns the layout of sluice's directories: the state
// directory (defaults.StateDir: sandbox records, their policies and CAs,
// container trust records, fences, the secret store) and the run directory
// (defaults.RunDir: the records of live `sluice run` sandboxes). The paths of
// those records are built here and nowhere else; pkg/secrets names its own
// files in Dir.Path (store, key, signing key) and pkg/sandbox its uid locks.
// The defaults stay in pkg/defaults.
//
// It builds names and lists directories; it writes nothing, and removes
// only in RemoveSandbox. The values are plain strings, safe to copy and to
// use concurrently.
package statedir
