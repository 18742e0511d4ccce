package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDaemonFenceIsolatesSandboxes: a daemon limited to 4096 open files;
// sandbox A opens 2,500 connections (5,000 daemon descriptors unfenced) and
// holds them. Its connections fence refuses the excess; meanwhile sandbox
// B's HTTPS requests and DNS lookups all succeed; A's refusals are in the
// audit log, the metrics and `sluice blocked`.
func TestDaemonFenceIsolatesSandboxes(t *testing.T) {
	w := newWorld(t)
	w.dns.Set("allowed.test", "127.0.0.1")
	ml, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := ml.Addr().String()
	ml.Close()

	// The daemon runs with RLIMIT_NOFILE 4096 (soft and hard; it raises
	// the soft limit to the hard one).
	d := &daemonProc{t: t, w: w, socket: filepath.Join(w.dir, "sluice.sock"), state: filepath.Join(w.dir, "state"), log: &syncBuffer{}}
	auditPath := filepath.Join(w.dir, "daemon-audit.jsonl")
	d.cmd = exec.Command("sh", "-c", `ulimit -n 4096 && ulimit -Hn 4096 && exec "$@"`, "sh",
		sluiceBin(t), "daemon", "--socket", d.socket, "--state-dir", d.state,
		"--pin-dir", w.pin, "--dns-upstream", w.dns.Addr, "--dns-allow-loopback",
		"--upstream-ca", w.api.CAFile, "--audit", auditPath, "--metrics", metricsAddr)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	err = d.cmd.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, name := range d.names() {
			d.cli("detach", name)
		}
		d.stop()
	})
	waitUntil(t, "the daemon's control socket", func() bool {
		c, err := net.Dial("unix", d.socket)
		if err == nil {
			c.Close()
		}
		return err == nil
	})

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
	hold := exec.Command(os.Args[0], "-test.run=^$", fmt.Sprintf("127.0.0.1:%d|%d|%s", w.api.Port, attempts, flag))
	hold.Env = append(os.Environ(), "SLUICE_TEST_PROBE=holdconns")
	var holdOut bytes.Buffer
	hold.Stdout, hold.Stderr = &holdOut, &holdOut
	fd, err := syscall.Open(cgA, syscall.O_DIRECTORY|syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	hold.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	err = hold.Start()
	syscall.Close(fd)
	if err != nil {
		t.Fatal(err)
	}
	holdDone := make(chan struct{})
	go func() { hold.Wait(); close(holdDone) }()
	t.Cleanup(func() { os.WriteFile(flag, nil, 0o644); hold.Process.Kill(); <-holdDone })
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
