package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/testutil"
)

// TestDaemonLimitsIsolateSandboxes: a daemon limited to 4096 open files;
// sandbox A opens 2,500 connections (5,000 daemon descriptors unfenced) and
// holds them. Its connections fence refuses the excess; meanwhile sandbox
// B's HTTPS requests and DNS lookups all succeed; A's refusals are in the
// audit log, the metrics and `sluice blocked`.
func TestDaemonLimitsIsolateSandboxes(t *testing.T) {
	w := newWorld(t)
	w.dns.Set("allowed.test", "127.0.0.1")
	d, auditPath, metricsAddr := startLimitedDaemon(t, w)

	const limit, attempts = 400, 2500
	pa := writePolicy(t, w.dir, "a.yaml", fmt.Sprintf("version: 1\nrules:\n  - {name: api, cidrs: [127.0.0.1/32], ports: [%d]}\nlimits: {connections: %d}\n", w.api.Port, limit))
	pb := writePolicy(t, w.dir, "b.yaml", "version: 1\nrules:\n  - {name: api, hosts: [allowed.test]}\n")
	cgA, pidA := sandboxProc(t, "")
	cgB, pidB := sandboxProc(t, "")
	for _, a := range []struct {
		policy, name string
		pid          int
	}{{pa, "fa", pidA}, {pb, "fb", pidB}} {
		if out, err := d.cli("attach", "--policy", a.policy, "--pid", fmt.Sprint(a.pid), "--name", a.name); err != nil {
			t.Fatalf("attach %s: %v\n%s", a.name, err, out)
		}
	}

	// A opens its connections and holds them.
	flag := filepath.Join(w.dir, "release")
	holdDone, holdOut := startProbeIn(t, cgA, "holdconns", fmt.Sprintf("127.0.0.1:%d|%d|%s", w.api.Port, attempts, flag), flag)
	waitUntil(t, "sandbox A holding its connections", func() bool {
		_, err := os.Stat(flag + ".ready")
		return err == nil
	})
	summary, _ := os.ReadFile(flag + ".ready")
	t.Logf("sandbox A: %s", summary)
	fenceEvents := func() int {
		b, _ := os.ReadFile(auditPath)
		n := 0
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, `"kind":"fence"`) && strings.Contains(l, `"sandbox":"fa"`) && strings.Contains(l, `"reason":"connections"`) {
				n++
			}
		}
		return n
	}
	waitUntil(t, "A's refusals in the audit log", func() bool {
		n := fenceEvents()
		if n < attempts-limit-50 {
			t.Logf("%d fence events so far", n)
		}
		return n >= attempts-limit-50
	})

	// Meanwhile B is served.
	for i := 0; i < 3; i++ {
		out, err := inSandbox(t, cgB, "", curlArgs(w, "allowed.test")...)
		if err != nil || !strings.Contains(out, "hello from upstream") {
			t.Fatalf("sandbox B request %d while A is at its fence: %v\n%s\ndaemon log:\n%s", i, err, out, d.log)
		}
		out, err = inSandbox(t, cgB, "", "dig", "+short", "+tries=1", "+time=3", "allowed.test", "@192.0.2.53")
		if err != nil || strings.TrimSpace(out) != "127.0.0.1" {
			t.Fatalf("sandbox B DNS lookup %d while A is at its fence: %v\n%s", i, err, out)
		}
	}
	if strings.Contains(d.log.String(), "too many open files") {
		t.Fatalf("the daemon ran out of descriptors:\n%s", d.log)
	}

	// A's refusals in the metrics and in `sluice blocked`.
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `sluice_fence_refusals_total{fence="connections",sandbox="fa"}`) {
		t.Fatalf("metrics lack A's fence refusals:\n%s", grepLines(string(body), "fence"))
	}
	if strings.Contains(string(body), `sandbox="fb"}`) && strings.Contains(grepLines(string(body), "fence_refusals"), `"fb"`) {
		t.Fatalf("B was refused at a fence:\n%s", grepLines(string(body), "fence"))
	}
	out, err := exec.Command(sluiceBin(t), "blocked", "fa", "--pin-dir", w.pin, "--state-dir", d.state).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "fence_connections") {
		t.Fatalf("sluice blocked fa: %v\n%s", err, out)
	}

	os.WriteFile(flag, nil, 0o644)
	<-holdDone
	if !strings.HasPrefix(strings.TrimSpace(holdOut.String()), "ok connected=") {
		t.Fatalf("holdconns probe: %s", holdOut.String())
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// vmRSS returns a process's resident memory in KiB.
func vmRSS(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			var kb int
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
			return kb
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// startLimitedDaemon starts a private daemon with RLIMIT_NOFILE 4096 (soft
// and hard; it raises the soft limit to the hard one), an audit log and a
// metrics listener.
func startLimitedDaemon(t *testing.T, w *world) (d *daemonProc, auditPath, metricsAddr string) {
	t.Helper()
	d = startDaemon(t, w, daemonOpts{nofile: 4096, metrics: true})
	return d, d.audit, d.metrics
}

// startProbeIn starts a probe of the test binary in the cgroup cg; done is
// closed when it exits. The test's cleanup creates release (ending a
// holding probe) and kills it.
func startProbeIn(t *testing.T, cg, mode, target, release string, env ...string) (done chan struct{}, out *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$", target)
	cmd.Env = append(append(os.Environ(), "SLUICE_TEST_PROBE="+mode), env...)
	out = &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := testutil.StartInCgroup(cmd, cg); err != nil {
		t.Fatal(err)
	}
	done = make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { os.WriteFile(release, nil, 0o644); cmd.Process.Kill(); <-done })
	return done, out
}

// TestDaemonHeadLimitBoundsMemory: sandbox A opens 150 TLS connections to
// an intercepted host, each with an unfinished 512 KiB request head (75 MiB
// held unfenced). Its request_head_bytes fence (2 MiB) refuses the excess,
// the daemon's memory stays far below what A sent, and sandbox B's
// requests and lookups are served meanwhile.
func TestDaemonHeadLimitBoundsMemory(t *testing.T) {
	w := newWorld(t)
	w.dns.Set("allowed.test", "127.0.0.1")
	d, auditPath, _ := startLimitedDaemon(t, w)
	const conns, pad, limit = 150, 512 << 10, 2 << 20
	pa := writePolicy(t, w.dir, "a.yaml", fmt.Sprintf("version: 1\nrules:\n  - {name: api, hosts: [allowed.test], paths: [\"/**\"]}\nlimits: {request_head_bytes: %d}\n", limit))
	pb := writePolicy(t, w.dir, "b.yaml", "version: 1\nrules:\n  - {name: api, hosts: [allowed.test]}\n")
	cgA, pidA := sandboxProc(t, "")
	cgB, pidB := sandboxProc(t, "")
	for _, a := range []struct {
		policy, name string
		pid          int
	}{{pa, "ha", pidA}, {pb, "hb", pidB}} {
		if out, err := d.cli("attach", "--policy", a.policy, "--pid", fmt.Sprint(a.pid), "--name", a.name); err != nil {
			t.Fatalf("attach %s: %v\n%s", a.name, err, out)
		}
	}
	caPEM, err := d.cli("ca", "export", "ha")
	if err != nil {
		t.Fatalf("ca export: %v\n%s", err, caPEM)
	}
	caFile := filepath.Join(w.dir, "ha-ca.pem")
	if err := os.WriteFile(caFile, []byte(caPEM), 0o644); err != nil {
		t.Fatal(err)
	}
	before := vmRSS(t, d.cmd.Process.Pid)
	flag := filepath.Join(w.dir, "release-heads")
	done, out := startProbeIn(t, cgA, "holdheads", fmt.Sprintf("allowed.test:%d|allowed.test|%d|%d|%s", w.api.Port, conns, pad, flag), flag, "SSL_CERT_FILE="+caFile)
	waitUntil(t, "sandbox A sending its heads", func() bool {
		_, err := os.Stat(flag + ".ready")
		return err == nil
	})
	summary, _ := os.ReadFile(flag + ".ready")
	t.Logf("sandbox A: %s", summary)
	refused := func() int {
		b, _ := os.ReadFile(auditPath)
		return strings.Count(string(b), `"kind":"fence","sandbox":"ha"`)
	}
	// At most limit/pad heads fit (plus what was buffered before the
	// fence saw it): most of the others are refused.
	waitUntil(t, "A's head refusals in the audit log", func() bool { return refused() >= conns/2 })
	grown := vmRSS(t, d.cmd.Process.Pid) - before
	t.Logf("daemon RSS grew by %d KiB while A held %d unfinished heads of %d KiB (%d refused)", grown, conns, pad>>10, refused())
	if grown > conns*(pad>>10)/2 {
		t.Fatalf("daemon RSS grew by %d KiB: not bounded by the fence", grown)
	}
	for i := 0; i < 3; i++ {
		o, err := inSandbox(t, cgB, "", curlArgs(w, "allowed.test")...)
		if err != nil || !strings.Contains(o, "hello from upstream") {
			t.Fatalf("sandbox B request %d while A is at its fence: %v\n%s", i, err, o)
		}
		o, err = inSandbox(t, cgB, "", "dig", "+short", "+tries=1", "+time=3", "allowed.test", "@192.0.2.53")
		if err != nil || strings.TrimSpace(o) != "127.0.0.1" {
			t.Fatalf("sandbox B DNS lookup %d: %v\n%s", i, err, o)
		}
	}
	os.WriteFile(flag, nil, 0o644)
	<-done
	if !strings.HasPrefix(strings.TrimSpace(out.String()), "ok sent=") {
		t.Fatalf("holdheads probe: %s", out.String())
	}
}
