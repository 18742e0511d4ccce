// Package tlsca is the per-sandbox certificate authority of sluice's
// intercepting proxy.
//
// A CA is an ECDSA P-256 key and a self-signed CA certificate with a fixed
// validity (for example 30 days). It lives outside the sandbox: Save writes
// ca.crt (0644) and ca.key (0600) into a directory that only sluice can read,
// and only the certificate (CertPEM, or a Bundle with the system roots) is
// given to the sandbox. LoadOrCreate rotates: a CA that has expired or is
// inside its renewal window is replaced by a fresh one, and the caller must
// then rewrite the sandbox's bundle.
//
// Leaf certificates are minted on demand for one server name (a DNS name or
// an IP address literal), signed by the CA, and cached in an LRU cache.
// All leaves of one CA share one ECDSA key generated with the CA (it never
// leaves the process); only the signature is computed per name. A cached
// leaf is re-minted when it comes within a day of its expiry. A cache hit
// takes only a shared read lock (recency is refreshed on every 32nd hit). Concurrent
// misses for the same name mint once (singleflight).
//
// Invariants: a *CA is immutable after New/Load except for its leaf cache
// and is safe for concurrent use. Leaves never outlive the CA certificate.
// The CA key is never written anywhere except Save's key file.
package tlsca
