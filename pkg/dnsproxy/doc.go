// Package dnsproxy is sluice's built-in resolver: it answers a sandbox's DNS
// queries, resolves upstream only the names the sandbox's policy allows,
// remaps names to mirrors, caches upstream answers, and writes every answered
// address into the sandbox's kernel allowlist before the sandbox sees it.
//
// One Resolver (upstreams, cache) serves any number of sandboxes; each
// sandbox is served on its own listeners (Serve) or through its own handler
// (Handler), so the sandbox identity comes from the listener, never from
// anything in the query.
//
// Invariants:
//   - A query for a name the policy does not allow (enforce mode) is answered
//     NXDOMAIN and never reaches an upstream, whatever its type. Names that
//     are not plain host names (NUL, escapes, '*', empty labels) are never
//     forwarded either.
//   - Only A, AAAA, CNAME, HTTPS and SVCB are forwarded for allowed names.
//     Other types get an empty NOERROR answer (NODATA) without forwarding.
//     HTTPS/SVCB answers lose their ech, ipv4hint and ipv6hint parameters.
//   - An address reaches the sandbox only after Allowlister.Allow returned
//     nil for it; if the allowlist cannot be written the answer is SERVFAIL.
//   - An upstream failure is answered SERVFAIL, never with an unfiltered or
//     partial answer.
//   - Answers carry the client's query id and question, and fit the client's
//     UDP size (TC set otherwise).
//   - Every query yields exactly one audit event (kind "dns").
//
// Resolver, Bindings and the handlers are safe for concurrent use.
package dnsproxy
