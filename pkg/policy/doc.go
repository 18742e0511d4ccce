// Package policy parses, validates and compiles sluice policies (YAML,
// version 1) and answers the questions the resolver, the proxy and the
// kernel allowlist ask of them.
//
// Parsing runs in two stages: the YAML text becomes a yaml.Node tree, and a
// walk over that tree validates every field into typed, compiled values.
// Every problem is reported at once, each with its file:line:col (see
// Errors); warnings never make Parse fail (see Policy.Warnings).
//
// Invariants:
//   - Parse and Load do no I/O other than Load reading its one file; the
//     package has no global state.
//   - A *Policy returned by Parse is immutable and safe for concurrent use.
//   - Match* answer for enforce mode; in audit mode the caller lets the
//     traffic through and records "would_deny".
//   - Host lookups go through a reversed-label trie: a lookup costs
//     O(labels), never O(rules), and allocates nothing.
//   - Names are normalised (lower case, one trailing dot removed); a name
//     holding anything that is not valid in a DNS name (NUL, spaces, '/',
//     ':' ...) matches no rule.
//   - No secret value ever appears in an error, a warning or a Redacted
//     header: the policy only names secrets ({NAME}).
//
// Rules with processes: apply only to connections of matching executables:
// ForProcess returns the view of a policy for one executable (cached, safe
// for concurrent use); MatchName ignores views, because DNS answers are per
// sandbox. A rule's request: (shape.go) is data for the proxy, which shapes
// bodies; the policy only validates and compiles it. Package suggest writes
// a policy from an audit log.
//
// Explain and Diff answer `sluice policy explain` and `sluice policy diff`
// from the same matchers the resolver and the proxy use, so what they print
// is what enforcement does; ObservationOf turns a recorded audit event into
// what Diff replays. Schema is the JSON Schema of the format.
//
// The policy reference (fields, wildcard semantics, precedence table) is in
// the README (section "Policy reference").
package policy
