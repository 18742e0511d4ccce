package proxy

import (
	"crypto/tls"
	"net/http"
	"testing"

	"github.com/sluice-dev/sluice/pkg/audit"
)

// BenchmarkInterceptNewConnKex is a new TLS connection per request through
// sluice with a Go client (which offers X25519MLKEM768 and X25519), with
// crypto/tls's default key exchange on the sandbox side (the hybrid
// post-quantum one) and with Config.SandboxClassicalKEX (X25519, what an
// OpenSSL 3.0 server such as the bench's squid negotiates with the same
// client), and with the client resuming its TLS sessions (tickets from the
// sandbox-side server). cpu-µs/op is the whole process (client, sluice,
// upstream).
func BenchmarkInterceptNewConnKex(b *testing.B) {
	for _, k := range []struct {
		name      string
		classical bool
		resume    bool // the client resumes TLS sessions (curl does; hey and Go's default Transport do not)
	}{{"default", false, false}, {"classical", true, false}, {"default-resume", false, true}} {
		b.Run(k.name, func(b *testing.B) {
			p := newBenchPair(b, false, false, func(_ *env, cfg *Config) { cfg.SandboxClassicalKEX = k.classical })
			if k.resume {
				p.sluice.Transport.(*http.Transport).TLSClientConfig.ClientSessionCache = tls.NewLRUClientSessionCache(16)
			}
			measureGets(b, p.sluice, p.url)
		})
	}
}

// BenchmarkInterceptKeepAliveDiscard is BenchmarkInterceptCPU/keepalive
// with the events discarded: the test recorder keeps every event in a
// growing slice (its copying was a tenth of the proxy's samples), which the
// daemon's audit.Logger does not.
func BenchmarkInterceptKeepAliveDiscard(b *testing.B) {
	p := newBenchPair(b, true, false, func(e *env, _ *Config) { e.sb.Audit = audit.Discard{} })
	for _, c := range []struct {
		name string
		cl   *http.Client
	}{{"direct", p.direct}, {"sluice", p.sluice}} {
		b.Run(c.name, func(b *testing.B) {
			measureGets(b, c.cl, p.url)
		})
	}
}
