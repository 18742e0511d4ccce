// Package dnsproxy is sluice's built-in resolver: it answers a sandbox's DNS
// queries, resolves upstream only the names the sandbox's policy allows,
// remaps names to mirrors, caches upstream answers, and writes every answered
// address into the sandbox's kernel allowlist before the sandbox sees it.
//
// One Resolver (upstreams, cache) serves any number of sandboxes; each
// sandbox is served on its own listeners (Serve), on connections handed
// over for it (ServeConn, DNS over TCP), or through its own handler
// (Handler); on a socket shared by many sandboxes (ServeShared) the caller
// names the sandbox of each client address from what the kernel recorded.
// Either way the sandbox identity never comes from anything in the query. The upstream cache is shared by all sandboxes of a
// Resolver (same upstreams, same name and type); answers built from it are
// per sandbox, because they depend on the sandbox's policy.
//
// Invariants:
//   - A query for a name the policy does not allow (enforce mode) is answered
//     NXDOMAIN and never reaches an upstream, whatever its type. Names that
//     are not plain host names (NUL, escapes, '*', empty or long labels) are
//     answered NXDOMAIN and never forwarded either.
//   - Only the lower-cased name and the type of an allowed query reach an
//     upstream: the query id, the letter case (0x20), flags and EDNS0
//     options are the resolver's own, so none can carry data out.
//   - Only A, AAAA, CNAME, HTTPS and SVCB are forwarded for allowed names.
//     Other types (TXT, ANY, MX, ...) get an empty NOERROR answer (NODATA)
//     without forwarding: NODATA rather than REFUSED, so stub resolvers do
//     not fail over to another server or report an error for a name that
//     exists. HTTPS/SVCB answers lose their ech, ipv4hint and ipv6hint
//     parameters (and those keys in mandatory): hints would hand out
//     addresses outside the allowlist bookkeeping, ECH would hide the SNI.
//   - CNAME chains: every name in the chain is checked. A name that a rule
//     explicitly denies ends the answer with NXDOMAIN; a name no rule
//     mentions is accepted as an alias of the allowed name asked for (CDNs
//     such as x.cdn.example), and the final addresses are bound to the name
//     the sandbox asked for.
//   - An address reaches the sandbox only after Allowlister.Allow returned
//     nil for it, with expiry now + max(TTL, MinTTL) + Grace. If the
//     allowlist cannot be written the answer is SERVFAIL. A name keeps at
//     most PerNameCap addresses (least recently answered evicted, revoked
//     if the Allowlister is a Revoker and no other name holds them); an
//     answer never carries more addresses than that.
//   - Addresses that would open the host rather than a destination are
//     dropped from answers: unspecified, 0.0.0.0/8, link-local (metadata
//     169.254.169.254), multicast, fd00:ec2::254, and loopback unless
//     Config.AllowLoopback. Remap targets are trusted.
//   - An upstream failure (timeout, SERVFAIL, REFUSED, mismatched question)
//     is answered SERVFAIL after the remaining upstreams were tried, never
//     with an unfiltered or partial answer.
//   - Answers carry the client's query id and question, and fit the
//     client's UDP size (EDNS0 payload size, or 512; TC set otherwise).
//   - Every query yields exactly one audit event (kind "dns"); it carries
//     the name and type asked, never other query data. Events share their
//     Answers slice with later events: emitters must not modify it.
//   - Audit mode (policy mode: audit) resolves everything, including other
//     types, and marks what enforce mode would refuse "would_deny".
//
// Serving UDP (Serve): each listener has one reader goroutine. It reads up
// to 32 queries per recvmmsg and answers the cached ones inline from wire
// templates (fastpath.go), sends those answers with one sendmmsg, and then
// emits their audit events. Consecutive answers of one size to one client
// (a resolver library or load generator with queries in flight) go as one
// UDP_SEGMENT message that the kernel cuts into datagrams; where the
// kernel refuses that, the socket falls back to one datagram per answer.
// Every other query gets a goroutine of its own (at most 512 waiting for
// upstreams; past that a query is dropped with an audit event), so slow
// names never stall cached ones. The reader's buffers start at one query
// and grow only while reads come back full; a one-query reader borrows its
// 4 KiB buffer from a pool once a datagram waits: an idle listener holds none.
// On loopback a cached answer costs mostly the system calls and the
// loopback delivery, which is what the batches and the segmentation cut.
// Other PacketConns than *net.UDPConn are served one datagram at a time,
// as is the shared socket of ServeShared (one reader, template hits inline,
// other queries on goroutines, at most 512 per sandbox).
//
// TCP is served by miekg/dns on Serve's listener, or by ServeConn on one
// connection on the caller's goroutine, with the same answers: length
// framing, answers up to 65535 bytes, FORMERR for what does not unpack, at
// most 128 queries per connection, and every query read within
// Config.TCPReadTimeout (the first) or TCPIdleTimeout (later ones).
//
// Resolver, Bindings and the handlers are safe for concurrent use. A
// sandbox's handler is built once per Resolver and kept in the Sandbox
// (Handler), so Serve, ServeConn and ServeShared may run concurrently for
// one Sandbox; its fields must be set before the first of them and not
// changed afterwards. A Resolver holds no goroutines or sockets outside
// Serve, ServeConn and ServeShared.
package dnsproxy
