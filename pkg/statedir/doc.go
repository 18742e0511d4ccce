// Package statedir owns the layout of sluice's directories: the state
// directory (defaults.StateDir: sandbox records, their policies and CAs,
// container trust records, fences, the secret store) and the run directory
// (defaults.RunDir: the records of live `sluice run` sandboxes). Every path
// below them is built here and nowhere else; the defaults stay in
// pkg/defaults.
//
// It builds names only: it creates, reads and removes nothing except what
// RemoveSandbox says.
package statedir
