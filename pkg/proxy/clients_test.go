package proxy

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/testutil"
	"github.com/sluice-dev/sluice/pkg/tlsca"
)

// TestRealClients runs curl (HTTP/1.1 and HTTP/2), Python urllib/http.client
// and Node https through the intercepting proxy, trusting the sandbox CA the
// way `sluice run` sets it up (a bundle of system roots + sandbox CA in
// SSL_CERT_FILE / CURL_CA_BUNDLE / NODE_EXTRA_CA_CERTS). Each client is
// pointed at the proxy listener; the fake kernel table answers the upstream
// as original destination. Clients that are not installed are skipped.
func TestRealClients(t *testing.T) {
	up := newUpstream(t, "127.0.0.1", echoHeaders(nil))
	dst := addrPort(t, up.URL)
	e := newEnv(t, apiPolicy(dst.Port()))
	e.bind("api.test", dst)
	e.orig.setFallback(dst)
	proxyPort := addrPort(t, e.ln.Addr().String()).Port()

	roots, err := tlsca.SystemRootsPEM()
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(t.TempDir(), "bundle.pem")
	if err := os.WriteFile(bundle, tlsca.Bundle(roots, e.sb.CA), 0o644); err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("https://api.test:%d/v1/x", proxyPort)
	py := fmt.Sprintf(`
import http.client, socket, ssl
ctx = ssl.create_default_context()  # SSL_CERT_FILE
ctx.verify_flags |= ssl.VERIFY_X509_STRICT
c = http.client.HTTPSConnection("api.test", %d, context=ctx)
c.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", %d)), server_hostname="api.test")
c.request("GET", "/v1/x")
r = c.getresponse()
print(r.status, r.read().decode())
`, proxyPort, proxyPort)
	node := fmt.Sprintf(`
const https = require("https");
https.get({host: "api.test", port: %d, path: "/v1/x",
  lookup: (h, o, cb) => o.all ? cb(null, [{address: "127.0.0.1", family: 4}]) : cb(null, "127.0.0.1", 4)},
  res => { let b = ""; res.on("data", d => b += d); res.on("end", () => console.log(res.statusCode, b)); })
  .on("error", e => { console.error(e.message); process.exit(1); });
`, proxyPort)
	tests := []struct {
		name string
		bin  string
		args []string
	}{
		{name: "curl http1.1", bin: "curl", args: []string{"-sS", "--http1.1", "--resolve", fmt.Sprintf("api.test:%d:127.0.0.1", proxyPort), "-w", " %{http_code}", url}},
		{name: "curl http2", bin: "curl", args: []string{"-sS", "--http2", "--resolve", fmt.Sprintf("api.test:%d:127.0.0.1", proxyPort), "-w", " %{http_version}", url}},
		{name: "python", bin: "python3", args: []string{"-c", py}},
		{name: "node", bin: "node", args: []string{"-e", node}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := exec.LookPath(tt.bin); err != nil {
				testutil.KernelLacks(t, "%s is not installed (scripts/deps.sh installs it)", tt.bin)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, tt.bin, tt.args...)
			cmd.Env = append(os.Environ(),
				"SSL_CERT_FILE="+bundle, "CURL_CA_BUNDLE="+bundle, "NODE_EXTRA_CA_CERTS="+bundle,
				"REQUESTS_CA_BUNDLE="+bundle, "http_proxy=", "https_proxy=", "HTTPS_PROXY=", "HTTP_PROXY=", "ALL_PROXY=")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if !strings.Contains(string(out), "auth=BEARER S3CR3T-TOKEN-VALUE") {
				t.Fatalf("output %q", out)
			}
			if tt.name == "curl http2" && !strings.HasSuffix(strings.TrimSpace(string(out)), "2") {
				t.Fatalf("curl did not use HTTP/2: %q", out)
			}
		})
	}
}
