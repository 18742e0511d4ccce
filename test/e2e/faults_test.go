package e2e

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/secrets"
	"github.com/sluice-dev/sluice/pkg/testutil"
	"github.com/sluice-dev/sluice/pkg/tlsca"
)

// Fault injection (issue 10): each test breaks one thing sluice depends on,
// checks that the sandbox loses access (fails closed) rather than gaining
// it, and that access comes back when the fault clears.

// runArgs builds `sluice run` arguments like world.run, for runs that need
// a wrapper (unshare) or their own flags.
func (w *world) runArgs(policyFile string, flags []string, cmd ...string) []string {
	w.auth = filepath.Join(w.dir, fmt.Sprintf("audit-%d.jsonl", time.Now().UnixNano()))
	args := []string{"run", "--policy", policyFile, "--name", "e2e", "--no-summary",
		"--dns-upstream", w.dns.Addr, "--dns-allow-loopback", "--upstream-ca", w.api.CAFile,
		"--secret-env", "DEMO_TOKEN", "--audit", w.auth, "--pin-dir", w.pin}
	if w.user != "" && !hasUserFlag(flags) {
		args = append(args, "--user", w.user)
	}
	args = append(args, flags...)
	return append(append(args, "--"), cmd...)
}

func execOut(t *testing.T, env []string, name string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), 0
	case errorsAs(err, &ee):
		return out.String(), ee.ExitCode()
	}
	t.Fatalf("%s: %v", name, err)
	return "", 0
}

func errorsAs(err error, ee **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	if ok {
		*ee = e
	}
	return ok
}

// startInSandbox starts a command inside cg without waiting for it.
func startInSandbox(t *testing.T, cg string, out io.Writer, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := testutil.StartInCgroup(cmd, cg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

const interceptPolicy = "version: 1\nrules:\n  - name: api\n    hosts: [allowed.test]\n    paths: [\"/ok\", \"/ok/**\"]\n"

// caFile exports the sandbox CA of a daemon sandbox for curl --cacert.
func (d *daemonProc) caFile(name string) string {
	d.t.Helper()
	out, err := exec.Command(sluiceBin(d.t), "ca", "export", name, "--socket", d.socket).Output()
	if err != nil {
		d.t.Fatalf("ca export: %v", err)
	}
	p := filepath.Join(d.w.dir, name+"-ca.pem")
	if err := os.WriteFile(p, out, 0o644); err != nil {
		d.t.Fatal(err)
	}
	return p
}

func interceptCurl(w *world, ca, path string, extra ...string) []string {
	args := []string{"curl", "-sS", "--max-time", "5", "--cacert", ca}
	args = append(args, extra...)
	return append(args, fmt.Sprintf("https://allowed.test:%d%s", w.api.Port, path))
}

func TestFaultDaemonKilledMidStream(t *testing.T) {
	t.Parallel()
	w, _ := advWorld(t)
	d := startDaemon(t, w, daemonOpts{})
	pol := writePolicy(t, w.dir, "p.yaml", interceptPolicy)
	cg, pid := sandboxProc(t, "")
	if out, err := d.cli("attach", "--policy", pol, "--pid", fmt.Sprint(pid), "--name", "mid"); err != nil {
		t.Fatalf("attach: %v\n%s", err, out)
	}
	ca := d.caFile("mid")
	// A 30 s download through the intercepting proxy.
	dl := filepath.Join(w.dir, "download")
	var curlOut bytes.Buffer
	curl := startInSandbox(t, cg, &curlOut, "curl", "-sS", "--max-time", "60", "--cacert", ca, "-o", dl,
		fmt.Sprintf("https://allowed.test:%d/ok/slow", w.api.Port))
	waitFor(t, "the download to start", 10*time.Second, func() bool {
		st, err := os.Stat(dl)
		return err == nil && st.Size() > 4096
	})
	d.kill9()
	done := make(chan error, 1)
	go func() { done <- curl.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("the download completed although the daemon died mid-stream:\n%s", curlOut.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the stream through the dead daemon was not cut within 10 s")
	}
	st, _ := os.Stat(dl)
	t.Logf("stream cut after %d bytes: %s", st.Size(), strings.TrimSpace(curlOut.String()))
	before := len(w.api.Requests())
	// Reconnects fail while the daemon is down (closed, never direct).
	if out, err := inSandbox(t, cg, "", interceptCurl(w, ca, "/ok")...); err == nil {
		t.Fatalf("reconnect succeeded while the daemon was down:\n%s", out)
	}
	if out, err := inSandbox(t, cg, "", "curl", "-sS", "--max-time", "3", "--cacert", w.api.CAFile,
		fmt.Sprintf("https://127.0.0.1:%d/ok", w.api.Port)); err == nil {
		t.Fatalf("a direct connection by address succeeded while the daemon was down:\n%s", out)
	}
	if n := len(w.api.Requests()) - before; n != 0 {
		t.Fatalf("the upstream got %d requests while the daemon was down", n)
	}
	d.start()
	var out string
	var err error
	for i := 0; i < 30; i++ {
		if out, err = inSandbox(t, cg, "", interceptCurl(w, ca, "/ok")...); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil || !strings.Contains(out, "hello from upstream /ok") {
		t.Fatalf("after the restart: %v\n%s\ndaemon log:\n%s", err, out, d.log)
	}
}

// callbackServer answers credential callbacks with a scripted sequence of
// behaviours, one per call; the last one repeats.
type callbackServer struct {
	url   string
	calls atomic.Int64
}

func startCallback(t *testing.T, steps ...func(w http.ResponseWriter)) *callbackServer {
	t.Helper()
	cb := &callbackServer{}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := int(cb.calls.Add(1)) - 1
		io.Copy(io.Discard, r.Body)
		steps[min(n, len(steps)-1)](w)
	})}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	cb.url = "http://" + ln.Addr().String() + "/credentials"
	return cb
}

// TestFaultCallbackFailsClosed: a slow, erroring, malformed or
// header-smuggling callback fails the request with 502 and nothing reaches
// the upstream; when the callback answers properly, the request goes
// through with its header. The run happens in a private mount namespace with
// a tmpfs over /var/lib, since `sluice run` keeps its callback signing key in
// /var/lib/sluice and has no --state-dir flag.
func TestFaultCallbackFailsClosed(t *testing.T) {
	t.Parallel()
	w, _ := advWorld(t)
	const token = "cb-t0ken-9f2a"
	cb := startCallback(t,
		func(w http.ResponseWriter) {
			time.Sleep(3 * time.Second)
			w.Write([]byte(`{"headers":{"X-Cb":"late"}}`))
		},
		func(w http.ResponseWriter) { http.Error(w, "boom", http.StatusInternalServerError) },
		func(w http.ResponseWriter) { w.Write([]byte(`{"headers": {"X-Cb": `)) },
		func(w http.ResponseWriter) { w.Write([]byte(`{"headers": {"Transfer-Encoding": "chunked"}}`)) },
		func(w http.ResponseWriter) { w.Write([]byte(`{"headers": {"X-Cb": "a\r\nX-Evil: 1"}}`)) },
		func(w http.ResponseWriter) {
			w.Write([]byte(`{"headers": {"X-Cb": "` + token + `"}, "ttl_seconds": 0}`))
		},
	)
	pol := writePolicy(t, w.dir, "cb.yaml", fmt.Sprintf(`version: 1
rules:
  - name: corp
    hosts: [allowed.test]
    callback: {url: %q, ttl: 1m, timeout: 1s}
`, cb.url))
	script := `for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w "%{http_code}\n" --max-time 10 https://allowed.test:` +
		strconv.Itoa(w.api.Port) + `/ok; done`
	args := append([]string{"-m", "--propagation", "private", "sh", "-c", `mount -t tmpfs tmpfs /var/lib && exec "$@"`, "sh", sluiceBin(t)},
		w.runArgs(pol, nil, "sh", "-c", script)...)
	out, code := execOut(t, []string{"DEMO_TOKEN=" + demoSecret}, "unshare", args...)
	if code != 0 {
		t.Fatalf("sluice run: exit %d\n%s", code, out)
	}
	codes := regexp.MustCompile(`(?m)^\d{3}$`).FindAllString(out, -1)
	want := []string{"502", "502", "502", "502", "502", "200"}
	if strings.Join(codes, " ") != strings.Join(want, " ") {
		t.Fatalf("status codes %v, want %v (slow, 500, malformed, forbidden header, CRLF in value, good)\n%s", codes, want, out)
	}
	reqs := w.api.Requests()
	if len(reqs) != 1 || reqs[0].Header.Get("X-Cb") != token || reqs[0].Header.Get("X-Evil") != "" {
		t.Fatalf("the upstream must see exactly the one request with the callback's header, got %+v", reqs)
	}
	if strings.Contains(out, token) {
		t.Fatal("the callback's header value appeared in sluice run's output")
	}
}

func TestFaultUpstreamDNSDead(t *testing.T) {
	t.Parallel()
	w, _ := advWorld(t)
	d := startDaemon(t, w, daemonOpts{})
	pol := writePolicy(t, w.dir, "p.yaml", "version: 1\nrules:\n  - name: p\n    hosts: [plain.test]\n")
	cg, pid := sandboxProc(t, "")
	if out, err := d.cli("attach", "--policy", pol, "--pid", fmt.Sprint(pid), "--name", "dnsdead"); err != nil {
		t.Fatalf("attach: %v\n%s", err, out)
	}
	w.dns.SetDown(true)
	out, _ := inSandbox(t, cg, "", "env", "SLUICE_TEST_PROBE=dns", os.Args[0], "-test.run=^$", "udp|127.0.0.1:53|plain.test.|A")
	if !strings.HasPrefix(strings.TrimSpace(out), "ok SERVFAIL") && !strings.Contains(out, "timeout") {
		t.Fatalf("with the upstream resolver dead: %q, want SERVFAIL (or no answer)", out)
	}
	if out, err := inSandbox(t, cg, "", curlArgs(w, "plain.test")...); err == nil {
		t.Fatalf("curl succeeded with the upstream resolver dead:\n%s", out)
	}
	if n := len(w.api.Requests()); n != 0 {
		t.Fatalf("the upstream got %d requests", n)
	}
	w.dns.SetDown(false)
	var err error
	for i := 0; i < 50; i++ {
		if out, err = inSandbox(t, cg, "", curlArgs(w, "plain.test")...); err == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("after the resolver came back: %v\n%s", err, out)
	}
}

// flakyTLS is an HTTPS upstream whose first handshakes present a wrong
// certificate: first one from an unknown CA, then a trusted one for another
// name; after that the right one.
type flakyTLS struct {
	port      int
	caFile    string
	handshake atomic.Int64
	reqs      atomic.Int64
	auth      atomic.Value
}

func startFlakyTLS(t *testing.T, dir string) *flakyTLS {
	t.Helper()
	good, err := tlsca.New("flaky trusted", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	rogue, err := tlsca.New("flaky rogue", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	f := &flakyTLS{caFile: filepath.Join(dir, "flaky-ca.pem")}
	if err := os.WriteFile(f.caFile, good.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.port = ln.Addr().(*net.TCPAddr).Port
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			f.reqs.Add(1)
			f.auth.Store(r.Header.Get("Authorization"))
			fmt.Fprintln(w, "hello from flaky")
		}),
		TLSConfig: &tls.Config{GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
			switch f.handshake.Add(1) {
			case 1:
				return rogue.Leaf(h.ServerName)
			case 2:
				return good.Leaf("someone-else.test")
			}
			return good.Leaf(h.ServerName)
		}},
		ErrorLog: nil,
	}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return f
}

func TestFaultUpstreamTLSWrong(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	up := startFlakyTLS(t, w.dir)
	script := `for i in 1 2 3; do curl -s -o /dev/null -w "%{http_code}\n" --max-time 10 https://allowed.test:` +
		strconv.Itoa(up.port) + `/v1; done`
	out, code := w.run(t, "", "--no-summary", "--upstream-ca", up.caFile, "--", "sh", "-c", script)
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, out)
	}
	codes := regexp.MustCompile(`(?m)^\d{3}$`).FindAllString(out, -1)
	if strings.Join(codes, " ") != "502 502 200" {
		t.Fatalf("status codes %v, want [502 502 200] (unknown CA, wrong name, recovered)\n%s", codes, out)
	}
	if up.reqs.Load() != 1 || up.auth.Load() != "Bearer "+demoSecret {
		t.Fatalf("upstream saw %d requests (want only the one after the certificate was right), auth %q", up.reqs.Load(), up.auth.Load())
	}
	var verr bool
	for _, ev := range w.events(t) {
		verr = verr || strings.Contains(ev.Reason, "TLS verification")
	}
	if !verr {
		t.Error("no audit event names the TLS verification failure")
	}
}

func TestFaultSecretStoreKeyMissing(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	state := filepath.Join(w.dir, "state")
	set := exec.Command(sluiceBin(t), "secret", "set", "DEMO_TOKEN", "--state-dir", state)
	set.Stdin = strings.NewReader(demoSecret + "\n")
	if out, err := set.CombinedOutput(); err != nil {
		t.Fatalf("secret set: %v\n%s", err, out)
	}
	keyPath := filepath.Join(state, secrets.KeyFile)
	key, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(keyPath); err != nil {
		t.Fatal(err)
	}
	pol := writePolicy(t, w.dir, "p.yaml", "version: 1\nrules:\n  - name: api\n    hosts: [allowed.test]\n    headers:\n      - {name: Authorization, type: secret, value: \"Bearer {DEMO_TOKEN}\"}\n")

	d, out, up := tryStartDaemon(t, w, daemonOpts{name: "nokey", state: state})
	if up {
		// It came up: then a request that needs the secret must fail closed.
		cg, pid := sandboxProc(t, "")
		if o, err := d.cli("attach", "--policy", pol, "--pid", fmt.Sprint(pid), "--name", "nokey"); err != nil {
			t.Fatalf("attach: %v\n%s", err, o)
		}
		o, _ := inSandbox(t, cg, "", interceptCurl(w, d.caFile("nokey"), "/x", "-w", "%{http_code}")...)
		if !strings.Contains(o, "502") {
			t.Fatalf("with the store key missing: %q, want 502", o)
		}
		if n := len(w.api.Requests()); n != 0 {
			t.Fatalf("the upstream got %d requests without the credential", n)
		}
		d.kill9()
		t.Logf("the daemon started without its store key; the request failed closed (502)")
	} else {
		t.Logf("the daemon refused to start without its store key:\n%s", out)
		if !strings.Contains(strings.ToLower(out), "key") {
			t.Errorf("the daemon's error does not name the key problem:\n%s", out)
		}
	}
	if strings.Contains(out, demoSecret) {
		t.Fatal("the secret appeared in the daemon's output")
	}
	// Recovery: the key is back (a daemon may have written a fresh one).
	if err := os.WriteFile(keyPath, key, 0o600); err != nil {
		t.Fatal(err)
	}
	d, out, up = tryStartDaemon(t, w, daemonOpts{name: "withkey", state: state})
	if !up {
		t.Fatalf("with the key restored the daemon does not start:\n%s", out)
	}
	cg, pid := sandboxProc(t, "")
	if o, err := d.cli("attach", "--policy", pol, "--pid", fmt.Sprint(pid), "--name", "withkey"); err != nil {
		t.Fatalf("attach: %v\n%s", err, o)
	}
	if o, err := inSandbox(t, cg, "", interceptCurl(w, d.caFile("withkey"), "/x")...); err != nil || !strings.Contains(o, "hello from upstream") {
		t.Fatalf("with the key restored: %v\n%s", err, o)
	}
	reqs := w.api.Requests()
	if len(reqs) != 1 || reqs[0].Header.Get("Authorization") != "Bearer "+demoSecret {
		t.Fatalf("upstream requests %+v", reqs)
	}
}

// TestFaultBPFFSNotMounted: a pin directory that is not on bpffs (bpffs
// missing, or the directory on another file system) must stop `sluice run`
// and `sluice daemon` before anything runs unenforced: unpinned links
// would vanish with the process, leaving the sandbox open.
func TestFaultBPFFSNotMounted(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	notBPF := filepath.Join(t.TempDir(), "v1") // tmpfs or disk, never bpffs
	marker := filepath.Join(w.dir, "ran")
	out, code := execOut(t, nil, sluiceBin(t), "run", "--policy", "../../testdata/policies/demo.yaml",
		"--dns-upstream", w.dns.Addr, "--pin-dir", notBPF, "--", "touch", marker)
	if code == 0 {
		t.Fatalf("sluice run with a pin dir off bpffs succeeded:\n%s", out)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the command ran although the programs could not be pinned")
	}
	if !strings.Contains(out, "bpf") {
		t.Errorf("the error does not point at bpffs:\n%s", out)
	}
	if _, out, up := tryStartDaemon(t, w, daemonOpts{name: "nb", pinDir: notBPF}); up {
		t.Fatal("the daemon came up with a pin dir that is not on bpffs")
	} else {
		t.Logf("daemon refused: %s", strings.TrimSpace(out))
	}
	// Recovery: on bpffs, the same run works.
	out, code = execOut(t, nil, sluiceBin(t), "run", "--policy", "../../testdata/policies/demo.yaml",
		"--dns-upstream", w.dns.Addr, "--pin-dir", w.pin, "--user", "root", "--", "touch", marker)
	if code != 0 {
		t.Fatalf("with bpffs: exit %d\n%s", code, out)
	}
}

// TestFaultBPFFSPrivateToDaemon: the daemon runs in its own mount namespace
// where bpffs is not the host's (its /sys/fs/bpf unmounted there, so it
// mounts a private instance). When that daemon dies, its pins die with the
// namespace. The sandbox must still fail closed.
func TestFaultBPFFSPrivateToDaemon(t *testing.T) {
	t.Parallel()
	w, _ := advWorld(t)
	pin := "/sys/fs/bpf/" + testutil.RandomName("sluice-private-") + "/v1"
	d, out, up := tryStartDaemon(t, w, daemonOpts{name: "priv", pinDir: pin, private: true})
	if !up {
		// Refusing to start on a bpffs private to its mount namespace is
		// the fail-closed outcome.
		if !strings.Contains(out, "bpf") {
			t.Fatalf("the daemon exited without naming bpffs:\n%s", out)
		}
		t.Logf("daemon refused a namespace-private bpffs: %s", strings.TrimSpace(out))
		return
	}
	pol := writePolicy(t, w.dir, "p.yaml", "version: 1\nrules:\n  - name: p\n    hosts: [plain.test]\n")
	cg, pid := sandboxProc(t, "")
	if out, err := d.cli("attach", "--policy", pol, "--pid", fmt.Sprint(pid), "--name", "priv"); err != nil {
		t.Fatalf("attach: %v\n%s", err, out)
	}
	canary := testutil.TCPCanary(t, "tcp4")
	if out, _ := inSandbox(t, cg, "", "env", "SLUICE_TEST_PROBE=tcp", os.Args[0], "-test.run=^$", canary.Addr); !strings.Contains(out, "error EPERM") {
		t.Fatalf("while the daemon runs: %q, want EPERM", out)
	}
	d.kill9()
	time.Sleep(200 * time.Millisecond)
	out, _ = inSandbox(t, cg, "", "env", "SLUICE_TEST_PROBE=tcp", os.Args[0], "-test.run=^$", canary.Addr)
	if canary.Hits() != 0 || !strings.Contains(out, "error") {
		t.Fatalf("BYPASS (fail open): after the daemon with a namespace-private bpffs died, the sandbox reached a forbidden listener (%q, %d hits)."+
			" The links were pinned only in the daemon's private bpffs and went away with it."+
			" Suggested fix: refuse to start (or to attach) when the pin dir's bpffs is not the host's (mount namespace differs from pid 1's), or keep a holder process", out, canary.Hits())
	}
}

func TestFaultAuditDiskFull(t *testing.T) {
	t.Parallel()
	w, _ := advWorld(t)
	// sluice run with its audit log on /dev/full: traffic continues.
	out, code := w.runRaw(t, []string{"--audit", "/dev/full"}, "curl", "-sS", "--max-time", "5",
		fmt.Sprintf("https://allowed.test:%d/ok", w.api.Port))
	if code != 0 || !strings.Contains(out, "hello from upstream /ok") {
		t.Fatalf("sluice run --audit /dev/full: exit %d\n%s", code, out)
	}
	// The daemon on /dev/full: traffic continues and the failed writes are
	// counted (Prometheus).
	d := startDaemon(t, w, daemonOpts{name: "full", audit: "/dev/full", metrics: true})
	metricsAddr := d.metrics
	pol := writePolicy(t, w.dir, "p.yaml", "version: 1\nrules:\n  - name: p\n    hosts: [plain.test]\n")
	cg, pid := sandboxProc(t, "")
	if o, err := d.cli("attach", "--policy", pol, "--pid", fmt.Sprint(pid), "--name", "full"); err != nil {
		t.Fatalf("attach: %v\n%s", err, o)
	}
	for i := 0; i < 5; i++ {
		if o, err := inSandbox(t, cg, "", curlArgs(w, "plain.test")...); err != nil {
			t.Fatalf("request %d with the audit disk full: %v\n%s", i, err, o)
		}
	}
	var errs float64
	waitFor(t, "sink errors in the metrics", 15*time.Second, func() bool {
		resp, err := http.Get("http://" + metricsAddr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		m := regexp.MustCompile(`(?m)^sluice_audit_sink_errors_total(\{[^}]*\})? ([0-9.e+]+)$`).FindAllStringSubmatch(string(b), -1)
		errs = 0
		for _, x := range m {
			v, _ := strconv.ParseFloat(x[2], 64)
			errs += v
		}
		return errs > 0
	})
	t.Logf("audit sink errors counted: %v", errs)
}

// runRaw runs `sluice run` with extra flags replacing world.run's audit file.
func (w *world) runRaw(t *testing.T, flags []string, cmd ...string) (string, int) {
	t.Helper()
	args := []string{"run", "--policy", writePolicy(t, w.dir, "raw.yaml", bypassPolicy), "--name", "e2e", "--no-summary",
		"--dns-upstream", w.dns.Addr, "--dns-allow-loopback", "--upstream-ca", w.api.CAFile,
		"--secret-env", "DEMO_TOKEN", "--pin-dir", w.pin}
	if w.user != "" && !hasUserFlag(flags) {
		args = append(args, "--user", w.user)
	}
	args = append(append(append(args, flags...), "--"), cmd...)
	return execOut(t, []string{"DEMO_TOKEN=" + demoSecret}, sluiceBin(t), args...)
}

func TestFaultPolicyReloadInvalid(t *testing.T) {
	t.Parallel()
	w, _ := advWorld(t) // its upstream has a certificate for forbidden.test
	d := startDaemon(t, w, daemonOpts{})
	good := writePolicy(t, w.dir, "good.yaml", "version: 1\nrules:\n  - name: p\n    hosts: [plain.test]\n")
	cg, pid := sandboxProc(t, "")
	if out, err := d.cli("attach", "--policy", good, "--pid", fmt.Sprint(pid), "--name", "reload"); err != nil {
		t.Fatalf("attach: %v\n%s", err, out)
	}
	if out, err := inSandbox(t, cg, "", curlArgs(w, "plain.test")...); err != nil {
		t.Fatalf("before: %v\n%s", err, out)
	}
	// An invalid replacement that would also open forbidden.test.
	bad := writePolicy(t, w.dir, "bad.yaml", "version: 1\nrules:\n  - name: p\n    hosts: [plain.test, forbidden.test]\n    action: maybe\n")
	out, err := d.cli("attach", "--policy", bad, "--pid", fmt.Sprint(pid), "--name", "reload")
	if err == nil {
		t.Fatalf("attach with an invalid policy succeeded:\n%s", out)
	}
	if !regexp.MustCompile(`bad\.yaml:5:\d+`).MatchString(out) {
		t.Errorf("the error does not name file:line:col (bad.yaml:5:N):\n%s", out)
	}
	// The old policy stays in force: plain.test works, forbidden.test does not.
	if out, err := inSandbox(t, cg, "", curlArgs(w, "plain.test")...); err != nil {
		t.Fatalf("after the rejected reload, the old policy's host fails: %v\n%s", err, out)
	}
	if out, err := inSandbox(t, cg, "", curlArgs(w, "forbidden.test")...); err == nil {
		t.Fatalf("after the rejected reload, forbidden.test is reachable:\n%s", out)
	}
	if w.dns.Received("forbidden.test") {
		t.Fatal("forbidden.test reached the upstream resolver")
	}
	var infos []map[string]any
	lo, _ := d.cli("list", "--json")
	_ = json.Unmarshal([]byte(lo), &infos)
	// sluice list also shows the host's live sluice run sandboxes (other
	// tests run in parallel): count the daemon's own.
	infos = slices.DeleteFunc(infos, func(i map[string]any) bool { return i["run_pid"] != nil })
	if len(infos) != 1 {
		t.Fatalf("sandboxes after the rejected reload: %s", lo)
	}
	// Recovery: a valid replacement takes effect.
	fixed := writePolicy(t, w.dir, "fixed.yaml", "version: 1\nrules:\n  - name: p\n    hosts: [plain.test, forbidden.test]\n")
	if out, err := d.cli("attach", "--policy", fixed, "--pid", fmt.Sprint(pid), "--name", "reload"); err != nil {
		t.Fatalf("valid reload: %v\n%s", err, out)
	}
	if out, err := inSandbox(t, cg, "", curlArgs(w, "forbidden.test")...); err != nil {
		t.Fatalf("after the valid reload: %v\n%s", err, out)
	}
}

// TestFaultSlowClientHelloIsServed: a TLS client that sends its ClientHello
// a second after connecting (a client slowed down by a loaded host) to an
// intercepted host must be served. The soak test loses connections this
// way under load: the proxy's peek waits only Config.FirstByteTimeout
// (500 ms) for a first byte, then treats the connection as a
// server-speaks-first protocol, which an intercept rule refuses.
func TestFaultSlowClientHelloIsServed(t *testing.T) {
	w, pol := advWorld(t)
	addr := fmt.Sprintf("127.0.0.1:%d", w.api.Port)
	pf := payloadFile(t, w.dir, httpReq("GET", "/ok", fmt.Sprintf("allowed.test:%d", w.api.Port)))
	res := w.probes(t, pol, []string{"allowed.test"}, "slowtls",
		addr+"|allowed.test|0s|"+pf,
		addr+"|allowed.test|1s|"+pf)
	if !strings.HasPrefix(res[0], "ok HTTP/1.1 200") {
		t.Fatalf("control (no delay): %q", res[0])
	}
	if !strings.HasPrefix(res[1], "ok HTTP/1.1 200") {
		t.Fatalf("LOST CONNECTION: a ClientHello sent 1 s after connect to an intercepted host was refused (%q)."+
			" pkg/proxy peek gives up after FirstByteTimeout and decides as a server-first protocol; suggested fix:"+
			" when the address-level decision needs interception (or is a denial), wait the full PeekTimeout for the first byte", res[1])
	}
}
