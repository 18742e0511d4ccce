package daemon

import "os"

// sandboxClassicalKEX reports SLUICE_SANDBOX_CLASSICAL_KEX=1: the
// sandbox-facing TLS server then offers only classical key exchanges
// (proxy.Config.SandboxClassicalKEX; about a fifth of the proxy's CPU per new
// intercepted connection, pkg/proxy/PERF.md). Unset: crypto/tls's defaults,
// with the hybrid post-quantum X25519MLKEM768 preferred. Upstream
// connections keep crypto/tls's defaults either way.
func sandboxClassicalKEX() bool { return os.Getenv("SLUICE_SANDBOX_CLASSICAL_KEX") == "1" }
