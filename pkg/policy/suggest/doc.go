// Package suggest writes a policy from an audit log: the minimal policy
// that, in enforce mode, allows every DNS answer, connection and HTTP
// request the log recorded as allowed (or would_deny, for a log written
// under mode: audit), and nothing else (`sluice policy suggest`).
//
// What it keeps per host: the ports connected to, the methods and paths
// requested (paths sharing a parent with many siblings collapse to a glob),
// the single executable that used the host (processes:) when only one did,
// and the names of headers sluice injected, with a secret placeholder in
// place of the value: secrets are never guessed. A name that was only
// resolved, never connected to, gets a rule too (the sandbox must still be
// able to resolve it); a connection without a name gets a cidrs rule for
// its address.
//
// The package does no I/O; Suggest is deterministic for a given input.
package suggest
