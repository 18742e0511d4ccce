package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkPeerMitmproxy compares intercepted HTTPS keep-alive requests
// (with a header injected) through sluice and through mitmdump (Debian's
// mitmproxy, explicit proxy mode with an addon injecting the same header),
// interleaved in one run. It skips when mitmdump is not installed. The peer
// skips upstream certificate verification (mitmproxy 8 rejected the test CA
// given as ssl_verify_upstream_trusted_ca), which can only flatter it.
func BenchmarkPeerMitmproxy(b *testing.B) {
	bin, err := exec.LookPath("mitmdump")
	if err != nil {
		b.Skip("mitmdump not installed")
	}
	// Upstream on an IP literal: the peer then needs no name resolution.
	up := newUpstream(b, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "" {
			http.Error(w, "no credentials", 401)
			return
		}
		io.WriteString(w, "ok")
	}))
	ipLeaf, err := upstreamCA.Leaf("127.0.0.1")
	if err != nil {
		b.Fatal(err)
	}
	get := up.TLS.GetCertificate
	up.TLS.GetCertificate = func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
		if h.ServerName == "" {
			return ipLeaf, nil
		}
		return get(h)
	}
	dst := addrPort(b, up.URL)

	dir := b.TempDir()
	addon := filepath.Join(dir, "inject.py")
	os.WriteFile(addon, []byte("def request(flow):\n    flow.request.headers['Authorization'] = 'Bearer s3cr3t-token-value'\n"), 0o644)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--listen-host", "127.0.0.1", "--listen-port", fmt.Sprint(port),
		"--set", "confdir="+dir, "--set", "ssl_insecure=true", "-s", addon)
	cmd.Env = append(os.Environ(), "HOME="+dir)
	if os.Getenv("SLUICE_TEST_DEBUG") != "" {
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cancel(); cmd.Wait() }()
	mitmCA := filepath.Join(dir, "mitmproxy-ca-cert.pem")
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if _, serr := os.Stat(mitmCA); err == nil && serr == nil {
			c.Close()
			break
		} else if err == nil {
			c.Close()
		}
		if time.Now().After(deadline) {
			b.Skip("mitmdump did not start")
		}
		time.Sleep(100 * time.Millisecond)
	}
	pem, _ := os.ReadFile(mitmCA)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	proxyURL, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", port))
	peerTr := &http.Transport{Proxy: http.ProxyURL(proxyURL), TLSClientConfig: &tls.Config{RootCAs: pool}}
	defer peerTr.CloseIdleConnections()
	peer := &http.Client{Transport: peerTr}

	e := newEnv(b, apiPolicy(dst.Port()))
	e.bind("api.test", dst)
	sluice := e.client(false)

	peerURL := fmt.Sprintf("https://%s/v1/x", dst)
	sluiceURL := fmt.Sprintf("https://api.test:%d/v1/x", dst.Port())
	getOK(b, peer, peerURL)
	getOK(b, sluice, sluiceURL)
	var tp, ts time.Duration
	var n int
	for b.Loop() {
		t0 := time.Now()
		getOK(b, peer, peerURL)
		t1 := time.Now()
		getOK(b, sluice, sluiceURL)
		tp += t1.Sub(t0)
		ts += time.Since(t1)
		n++
	}
	b.ReportMetric(float64(n)/tp.Seconds(), "mitmproxy-req/s")
	b.ReportMetric(float64(n)/ts.Seconds(), "sluice-req/s")
	b.ReportMetric(tp.Seconds()/ts.Seconds(), "sluice/mitmproxy")
}

func getOK(b *testing.B, c *http.Client, u string) {
	resp, err := c.Get(u)
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		b.Fatalf("%s: status %d", u, resp.StatusCode)
	}
}
