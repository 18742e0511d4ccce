// Package secrets holds the credentials sluice injects on behalf of a
// sandbox, outside the sandbox: an encrypted store, read-only providers (the
// daemon's environment, a directory of files, a static map for `sluice run`),
// a resolver chain, write-only opaque header values, signed credential
// callbacks and OAuth2 token minting.
//
// Invariants:
//
//   - No value ever appears in an error, a log record, a String or a List
//     result produced by this package. Errors name the secret (its NAME) and
//     the scope, never its value; callback errors never contain response body
//     content; OAuth2 errors never contain token endpoint responses.
//   - Missing values fail closed: Lookup returns an error wrapping
//     ErrNotFound; callers must refuse the request, never send it without the
//     credential.
//   - The store file and key file are written 0600 with temp file + rename,
//     so a reader sees the old or the new file, never a partial one. A Store
//     notices a file replaced by another process (e.g. `sluice secret set`)
//     on the next Get: rotation needs no reload.
//   - Store, Chain, Callbacks, OAuth2 and SigV4 are safe for concurrent use.
//   - An AWS secret access key is only ever an HMAC key: what leaves sluice
//     is the signature. Bodies up to the proxy's limit are hashed; streaming
//     or larger bodies are signed with UNSIGNED-PAYLOAD.
//
// # Callback protocol
//
// sluice POSTs (Content-Type application/json)
//
//	{"sandbox": "<sandbox name>", "host": "<host>", "port": <port>, "labels": {"k": "v", ...}}
//
// where labels are the sandbox's labels (`sluice run --label user=alice`, pod
// labels, container annotations; {} without labels), so a service can mint
// per-user tokens. It expects a 2xx answer {"headers": {"Name": "value", ...}} with an
// optional "ttl_seconds" (a number >= 0). The answer is cached per (callback
// URL, sandbox, host, port) for the rule's ttl, or ttl_seconds if smaller.
// Redirects are not followed. A timeout, connection error, non-2xx status,
// malformed or oversized (> 1 MiB) body, or a header name/value that is not
// valid HTTP (or one of Host, Content-Length, Transfer-Encoding, Connection
// and other hop-by-hop headers) is a *CallbackError: the request fails
// closed and the error text carries only the reason category.
//
// # Callback signature
//
// Every credential callback request carries
//
//	Sluice-Signature: t=<unix seconds>,ed25519=<base64 std, padded>
//
// where the signature is Ed25519 over the bytes "<t>.<body>" (the decimal
// timestamp exactly as sent in t=, one ASCII dot, then the raw request body).
// The public key is printed by `sluice callback-key` (PEM, or JWK with
// --jwk). Verify implements the check for callback servers: it rejects a
// timestamp further than maxSkew from now and accepts the header when any of
// its ed25519= entries verifies. Unknown key=value entries are ignored, so
// the format can grow.
package secrets
