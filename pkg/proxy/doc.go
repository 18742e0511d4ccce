// Package proxy is sluice's transparent egress proxy: one Server per sandbox
// (NewServer) receives the TCP connections the kernel redirected from that
// sandbox, from the sandbox's own listeners (Server.Serve, or Proxy.Serve for
// one listener) or from a caller that accepted them on a listener shared by
// all sandboxes and looked their original destination up itself
// (Server.ServeConn). It recovers each one's original destination
// (OriginalDst) unless given, reads the TLS ClientHello's server name or the
// plain HTTP Host (a bounded peek), and decides with the sandbox's policy:
//
//   - deny: a TLS or HTTP client with a known host gets an HTTP 403 whose
//     body names host, method, path and "sluice policy" (TLS is terminated
//     with the sandbox CA for that); anything else is closed;
//   - splice: bytes are copied to the original destination untouched
//     (read/write through a pooled 256 KiB buffer, copy.go; or, with
//     Config.KernelSplice, redirected in the kernel), each direction
//     half-closed on EOF;
//   - intercept: TLS is terminated with a leaf of the sandbox CA (ALPN h2 and
//     http/1.1), every request is checked with MatchRequest, credentials are
//     injected (replacing same-named client headers), and the request is
//     forwarded over an upstream connection verified for the real host
//     name. HTTP/1.x clients are served by one loop per connection (h1.go:
//     read, check, forward on a pinned upstream connection, relay, with no
//     goroutine hand-off per request); HTTP/2 clients by http.Server's
//     HTTP/2 server and our per-stream handler (h2.go: the same gate,
//     header preparation and response filter, both bodies streamed under
//     HTTP/2 flow control) over a pooled transport (HTTP/2 where the
//     upstream offers it, many streams on one connection).
//
// Decision with names. A name from SNI or Host is trusted only when the
// sandbox's resolver bound it to the original address (NameLookup), or bound
// another name of the same rule (shared CDN addresses) or the rule's remap
// target. Otherwise the address must be admitted by a CIDR rule, and then that
// CIDR rule decides (never the name's rule, so a name cannot pull credentials
// to an address that was not resolved for it). Without SNI/Host the first
// bound name that needs HTTP-level handling decides (so omitting SNI on a
// shared address cannot escape a rule's paths), else the first allowed bound
// name, then the CIDR rules. A client that sends nothing within
// Config.FirstByteTimeout (a server-speaks-first protocol) is decided the same
// way, and refused when the decision needs HTTP.
//
// DNS over TCP. A connection whose original destination port is 53 is not
// decided: it goes, unread, to the sandbox's resolver (Sandbox.DNS), which
// records its queries; without one it is closed and recorded as denied.
//
// Per request, a Host that differs from the connection's name (domain
// fronting) is refused unless one rule allows both; CONNECT, protocol
// upgrades other than WebSocket (h2c would tunnel past the checks) and
// http:// absolute URIs on TLS are refused. The method and target go
// through policy.Prepare (gate.go): an ambiguous target or a method not in
// upper case is refused with 400, method overrides are matched too, and
// the upstream receives the canonical target, never the bytes as sent. A
// rule's credentials go only over TLS unless it sets insecure_http. Alt-Svc is
// dropped from intercepted responses (HTTP/3 would go around interception).
//
// Request shaping (shape.go): a rule's request: section caps, refuses,
// validates (JSON) and redacts request bodies on both the HTTP/1.x loop and
// the HTTP/2 path. Bodies up to policy.PrebufferBody are checked whole
// before anything is forwarded (a refusal reaches the upstream as nothing);
// longer ones stream through a window of policy.MaxMatchLen bytes with
// bounded memory, and a violation found late aborts the upstream request
// before it completes. Events count redactions per pattern, never values.
//
// Per-process rules (process.go): the executable of the kernel-recorded pid
// is read from /proc/PID/exe when a connection is accepted; the connection
// and its requests are decided on policy.ForProcess's view for it, and
// refusals name the process. DNS answers stay per sandbox.
//
// Known limits: a spliced TLS connection is opaque, so a client can send one
// allowed SNI and another Host inside it to a shared (CDN) address; rules
// without HTTP-level needs are never intercepted (pinned certificates keep
// working), so this is accepted: put HTTP-level conditions on a rule to have
// its Host checked per request. Echo redaction knows the encodings listed
// in redact.go, no others.
//
// Upstream connections. Requests of connections admitted by name share
// upstream connections keyed by the scheme, upstream name and port and dial
// plan (across client connections and sandboxes: every such connection was
// verified for that name, and each request carries its own credentials).
// An HTTP/1.x client connection keeps the upstream connection its first
// request used while the next requests go to the same upstream, and returns
// it to an idle pool when it ends or sits idle for a second; an idle connection is checked for a peer
// close before reuse (one MSG_PEEK), and a request without a body is
// retried once on a fresh connection when a reused one turns out dead.
// HTTP/2 clients are forwarded over HTTP/2 where the upstream offers it,
// HTTP/1.1 clients over HTTP/1.1. A connection admitted by a CIDR rule
// never shares: its upstream connections only ever dial its original
// destination and are closed with it.
//
// Invariants:
//   - No upstream request is sent before the upstream certificate verified
//     for the host name the request is forwarded to (Config.RootCAs).
//   - The upstream transport never resolves names itself: it dials the
//     original destination, or a remap target through Config.Resolve.
//   - A secret that cannot be resolved or a failing callback fails the
//     request with 502; nothing is forwarded without its credentials.
//   - Secret values never appear in logs, errors or events; injected values
//     echoed by an upstream, as they are or encoded (redact.go), are
//     redacted in every part of the answer the sandbox reads: headers, 1xx
//     headers, bodies (decoded from gzip, deflate, br, zstd), trailers and
//     WebSocket frames (filter.go, websocket.go), and a "secret" event is
//     emitted. An answer that cannot be scanned (an unknown content coding,
//     a WebSocket extension) is refused with 502.
//   - Audit mode (policy.ModeAudit): what enforce would refuse is forwarded
//     (without credentials) and recorded with decision "would_deny". A
//     connection enforce would refuse waits up to PeekTimeout for a
//     ClientHello or request head (not FirstByteTimeout), so that its name
//     is recorded; a server-speaks-first protocol there starts that late.
//   - One "conn" event per connection (but those handed to Sandbox.DNS) and
//     one "http" event per intercepted request; no event carries a secret,
//     a query value or a body.
//
// A rule's oauth2 block injects "Authorization: Bearer" with a token from
// Sandbox.Tokens (a failed token request: 502, nothing forwarded); an
// aws_sigv4 block has Sandbox.Signer drop the sandbox's signature and sign
// the request as forwarded, its body hashed up to 1 MiB when the length is
// known, else UNSIGNED-PAYLOAD (authn.go). Credentials are resolved and the
// request signed last in the gate, after request shaping: the signature
// covers the body as redacted, and a request refused by its body (max_body,
// deny_body, json) looks up no secret.
//
// A Proxy and a Server are safe for concurrent use. An idle Server holds no
// goroutine (issue #21). Server.Close, which must be called, closes every
// connection and returns after their handlers; the end of NewServer's
// context closes them too. Proxy.Serve returns after every connection it
// accepted is closed.
//
// # Reading the code
//
// The files follow the path of a connection and its requests:
//
//   - proxy.go: the API (Config, Sandbox, New), Server (NewServer,
//     ServeConn, Serve: the accept loop, Close); fence.go: the sandbox's
//     connection and request-head fences; dns.go: DNS over TCP handed to
//     the sandbox's resolver.
//   - conn.go: per connection, the original destination, the peek (the
//     ClientHello and HTTP head parsers are in peek.go, names in host.go,
//     the process in process.go) and the decision: refuse, splice (also in
//     conn.go) or intercept.
//   - tls.go: interception: TLS termination with the sandbox CA, and the
//     hand-off to a front end by the negotiated protocol.
//   - h1.go: the HTTP/1.x front end, one loop per client connection: read a
//     request, gate it, forward it, relay the answer.
//   - h2.go: the HTTP/2 front end: http.Server, one handler per stream.
//   - gate.go: the request gate both front ends call (gate): policy match
//     in canonical form, cleartext and audit mode, upstream target; then
//     request shaping (shape.go, shape_prefilter.go); then credentials
//     (authn.go for oauth2 and aws_sigv4, signing the shaped body).
//   - upstream.go: dial plans, the HTTP/1.1 upstream connections and their
//     idle pool, the http.Transport pools of the HTTP/2 path, upstream TLS.
//   - filter.go: the response filter: Alt-Svc dropped, echoed secrets
//     redacted (redact.go) in headers, bodies, trailers and WebSocket frames
//     (websocket.go).
package proxy
