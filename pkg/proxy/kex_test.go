package proxy

import (
	"crypto/tls"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
)

// TestSandboxKeyExchange: the sandbox-facing handshake keeps crypto/tls's
// post-quantum default, and Config.SandboxClassicalKEX limits it to X25519
// (the upstream handshake is not affected: its own defaults).
func TestSandboxKeyExchange(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name      string
		classical bool
		want      tls.CurveID
	}{{"default", false, tls.X25519MLKEM768}, {"classical", true, tls.X25519}} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var upCurve atomic.Uint32
			up := newUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				upCurve.Store(uint32(r.TLS.CurveID))
			}))
			dst := addrPort(t, up.URL)
			e := newEnv(t, apiPolicy(dst.Port()), func(_ *env, cfg *Config) { cfg.SandboxClassicalKEX = tt.classical })
			e.bind("api.test", dst)
			resp, err := e.client(false).Get("https://api.test:" + strconv.Itoa(int(dst.Port())) + "/v1/x")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if got := resp.TLS.CurveID; got != tt.want {
				t.Errorf("sandbox-side key exchange %v, want %v", got, tt.want)
			}
			if got := tls.CurveID(upCurve.Load()); got != tls.X25519MLKEM768 {
				t.Errorf("upstream key exchange %v, want %v (crypto/tls's default)", got, tls.X25519MLKEM768)
			}
		})
	}
}
