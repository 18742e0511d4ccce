package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/testutil"
)

// Issue 15: `sluice run` is a boundary. These tests attack it from inside,
// as the default (unprivileged, per-sandbox) uid and as --user root.

// debianPython is the system python3 (the one on PATH here may be a pyenv
// shim under /root, which an unprivileged sandbox cannot read).
const debianPython = "/usr/bin/python3"

// publicDir returns a fresh directory every sandbox user can read, removed
// at the end of the test.
func publicDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "sluice-boundary-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// publicCopy copies testdata/name into a publicDir.
func publicCopy(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(publicDir(t), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// writeSluicePID finds the process running script, takes its grandparent
// (the sluice run process), checks it is sluice and writes its pid to
// pidFile. It returns the pid, or 0 after a minute.
func writeSluicePID(script, pidFile string) int {
	ppid := func(pid string) string {
		b, _ := os.ReadFile(filepath.Join("/proc", pid, "stat"))
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i >= 0 {
			if f := strings.Fields(s[i+1:]); len(f) > 1 {
				return f[1]
			}
		}
		return ""
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			cl, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
			if !strings.HasPrefix(string(cl), debianPython+"\x00"+script+"\x00") {
				continue
			}
			sl := ppid(ppid(e.Name()))
			slCl, _ := os.ReadFile(filepath.Join("/proc", sl, "cmdline"))
			if !strings.Contains(string(slCl), "\x00run\x00") {
				continue
			}
			n, _ := strconv.Atoi(sl)
			if os.WriteFile(pidFile+".tmp", []byte(sl), 0o644) == nil && os.Rename(pidFile+".tmp", pidFile) == nil {
				return n
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return 0
}

// attackNames are the attacks testdata/boundary_attacks.py makes; each
// must be reported blocked and followed by a refused probe.
var attackNames = []string{
	"cgroup-procs", "mount-cgroup2", "mount-cgroup1", "mount-bpffs", "mount-proc",
	"remount-rw-sys", "remount-rw-proc-sys", "remount-rw-sys-fs-cgroup",
	"umount-sys-fs-bpf", "umount-var-lib-sluice", "umount-proc", "umount-etc-ssl-certs-ca-certificates.crt",
	"bpf-prog-get-next-id", "bpf-link-detach", "bpffs-pins-visible",
	"kill-sluice", "ptrace-sluice", "pidfd-getfd-sluice", "ptrace-init", "pidfd-getfd-init", "see-sluice",
	"read-proc-1-environ", "read-proc-1-mem",
	"write-proc-sys-kernel-core_pattern", "write-proc-sysrq-trigger", "write-sys-kernel-mm-transparent_hugepage-enabled",
	"devices", "state-dir",
	"socket-af-packet", "socket-af-vsock", "socket-af-packet-dgram", "socket-af-alg", "socket-af-xdp", "socket-af-inet-raw",
	"unshare-user", "unshare-net", "unshare-mnt", "io-uring", "capabilities", "no-new-privs", "kill-all",
}

func TestBoundaryAttacks(t *testing.T) {
	testutil.RequirePrivileged(t)
	requireTools(t, debianPython)
	for _, user := range []string{"default", "root"} {
		t.Run(user, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t)
			if user == "default" {
				w.user = ""
			}
			canary := testutil.TCPCanary(t, "tcp4")
			script := publicCopy(t, "boundary_attacks.py")
			// The script aims at sluice's host pid: found from outside as
			// the grandparent (sluice → init → python) of the script.
			pidFile := filepath.Join(filepath.Dir(script), "sluice.pid")
			found := make(chan int, 1)
			go func() { found <- writeSluicePID(script, pidFile) }()
			out, code := w.run(t, "", debianPython, script, canary.Addr, pidFile)
			sluicePID := <-found
			if sluicePID == 0 || !strings.Contains(out, "SLUICE-PID-KNOWN") {
				t.Fatalf("the test could not hand sluice's pid to the sandbox:\n%s", out)
			}
			if code != 0 || !strings.Contains(out, "\nDONE\n") {
				t.Fatalf("attack battery: exit %d, want 0 and DONE:\n%s", code, out)
			}
			if !strings.Contains(out, "sluice: ") {
				t.Errorf("sluice run printed no summary: did it survive?\n%s", out)
			}

			results, probes := map[string]string{}, map[string]string{}
			for _, line := range strings.Split(out, "\n") {
				f := strings.Fields(line)
				switch {
				case len(f) >= 3 && f[0] == "RESULT":
					results[f[1]] = strings.Join(f[2:], " ")
				case len(f) >= 3 && f[0] == "PROBE":
					probes[f[1]] = f[2]
				}
			}
			for n, r := range results {
				if !strings.HasPrefix(r, "blocked") || probes[n] != "EPERM" {
					t.Errorf("attack %s: %s; probe after it: %q", n, r, probes[n])
				}
			}
			for _, n := range append(attackNames, "read-proc-"+strconv.Itoa(sluicePID)+"-environ", "read-proc-"+strconv.Itoa(sluicePID)+"-mem") {
				r, ok := results[n]
				if !ok {
					t.Errorf("attack %s did not run", n)
					continue
				}
				if !strings.HasPrefix(r, "blocked") {
					t.Errorf("attack %s: %s", n, r)
				}
				if p := probes[n]; p != "EPERM" {
					t.Errorf("after attack %s the forbidden listener probe gave %q, want EPERM", n, p)
				}
			}
			if n := canary.Hits(); n != 0 {
				t.Errorf("the forbidden listener received %d connections", n)
			}
			if t.Failed() {
				t.Logf("output:\n%s", out)
			}
		})
	}
}

// TestBoundaryTwoSandboxes: two concurrent sandboxes, both as the default
// user (two allocated uids), then both as --user root (one uid, so only
// the namespaces keep them apart). A cannot see B's processes, read its
// environment, take its proxied socket (pidfd_getfd) or signal it, even
// given B's host pids; B's credential never reaches an upstream through A.
func TestBoundaryTwoSandboxes(t *testing.T) {
	// Not t.Parallel: A and B are parallel subtests that must run at the
	// same time, and under -parallel 2 a busy pool runs them one after the
	// other (A then finds no process of B).
	t.Run("default", func(t *testing.T) { twoSandboxes(t, "") })
	t.Run("root", func(t *testing.T) { twoSandboxes(t, "root") })
}

// twoSandboxes is TestBoundaryTwoSandboxes with both commands run as user
// ("" for the default).
func twoSandboxes(t *testing.T, user string) {
	testutil.RequirePrivileged(t)
	requireTools(t, debianPython)
	pub := publicDir(t)
	if err := os.Chmod(pub, 0o1777); err != nil {
		t.Fatal(err)
	}
	a, b := publicCopy(t, "boundary_two_a.py"), publicCopy(t, "boundary_two_b.py")
	marker := "sandbox-b-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	secretB := leakValue(t, "two")
	wa, wb := newWorld(t), newWorld(t)
	wa.user, wb.user = user, user
	polB := writePolicy(t, wb.dir, "b.yaml", leakPolicy)
	sf := filepath.Join(wb.dir, "b.env")
	if err := os.WriteFile(sf, []byte("LEAK_TOKEN="+secretB+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	// The host side: once B is ready, hand A every host pid of B.
	found := make(chan int, 1)
	go func() {
		n := 0
		defer func() { found <- n }()
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			if _, err := os.Stat(filepath.Join(pub, "b-ready")); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		var pids []string
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			if _, err := strconv.Atoi(e.Name()); err != nil {
				continue
			}
			cl, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
			if strings.Contains(string(cl), marker) && strings.HasPrefix(string(cl), debianPython+"\x00") {
				pids = append(pids, e.Name())
			}
		}
		n = len(pids)
		_ = os.WriteFile(filepath.Join(pub, "b-pids"), []byte(strings.Join(pids, " ")+"\n"), 0o644)
	}()

	var outA, outB string
	var codeA, codeB int
	t.Run("pair", func(t *testing.T) {
		t.Run("B", func(t *testing.T) {
			t.Parallel()
			outB, codeB = wb.run(t, polB, "--secrets-file", sf, "--", debianPython, b, strconv.Itoa(wb.api.Port), pub, marker)
		})
		t.Run("A", func(t *testing.T) {
			t.Parallel()
			outA, codeA = wa.run(t, "", debianPython, a, strconv.Itoa(wa.api.Port), pub, reverse(marker))
		})
	})
	if n := <-found; n == 0 {
		t.Fatalf("the host found no process of sandbox B (the check could not fail)\nA:\n%s\nB:\n%s", outA, outB)
	}
	if codeA != 0 || codeB != 0 || !strings.Contains(outA, "A1 hello from upstream /a1") ||
		!strings.Contains(outB, "B2 hello from upstream /b2") || !strings.Contains(outA, "TRIED") {
		t.Fatalf("sandboxes: A exit %d, B exit %d\nA:\n%s\nB:\n%s", codeA, codeB, outA, outB)
	}
	if strings.Contains(outA, "SEEN") {
		t.Errorf("sandbox A reached sandbox B:\n%s", outA)
	}
	if strings.Contains(outA, secretB) {
		t.Error("sandbox A's output holds B's secret")
	}
	for _, r := range wa.api.Requests() {
		if strings.Contains(r.Header.Get("Authorization"), secretB) {
			t.Errorf("B's credential reached A's upstream on %s", r.Path)
		}
	}
	var bReqs int
	for _, r := range wb.api.Requests() {
		if r.Header.Get("Authorization") != "Bearer "+secretB || !strings.HasPrefix(r.Path, "/b") {
			t.Errorf("B's upstream got %s with an unexpected credential", r.Path)
		}
		bReqs++
	}
	if bReqs != 2 {
		t.Errorf("B's upstream got %d requests, want 2", bReqs)
	}
}

// reverse gives A the marker without A's own command line containing it.
func reverse(s string) string {
	r := []byte(s)
	for i, j := 0, len(r)-1; i < j; i, j = i+1, j-1 {
		r[i], r[j] = r[j], r[i]
	}
	return string(r)
}

// TestBoundaryNoSecretInProcesses: for each way of supplying a secret
// (--secret-env, --secrets-file, the store), while the sandbox runs, no
// process on the host (sluice included) and none in the sandbox holds the
// value in its environ or cmdline, and the command's environment has
// neither the secret's name nor a variable of the caller whose value
// equals it. Both as the default user and as --user root.
func TestBoundaryNoSecretInProcesses(t *testing.T) {
	t.Parallel()
	for _, user := range []string{"default", "root"} {
		t.Run(user, func(t *testing.T) {
			t.Parallel()
			noSecretInProcesses(t, strings.TrimPrefix(user, "default"))
		})
	}
}

// noSecretInProcesses is TestBoundaryNoSecretInProcesses with the command
// run as user ("" for the default).
func noSecretInProcesses(t *testing.T, user string) {
	w := newWorld(t)
	w.user = user
	pol := writePolicy(t, w.dir, "leak.yaml", leakPolicy)
	url := fmt.Sprintf("https://allowed.test:%d/leak", w.api.Port)
	for _, source := range []string{"secret-env", "secrets-file", "store"} {
		t.Run(source, func(t *testing.T) {
			v := leakValue(t, strings.ReplaceAll(source, "-", ""))
			pub := publicDir(t)
			if err := os.Chmod(pub, 0o1777); err != nil {
				t.Fatal(err)
			}
			// The caller's environment: the secret's name, and an
			// innocent-looking variable holding the value.
			w.env = []string{"LEAK_TOKEN=" + v, "INNOCENT_LOOKING=" + v}
			defer func() { w.env = nil }()
			var flags []string
			switch source {
			case "secret-env":
				flags = []string{"--secret-env", "LEAK_TOKEN"}
			case "secrets-file":
				sf := filepath.Join(w.dir, "leak.env")
				if err := os.WriteFile(sf, []byte("LEAK_TOKEN="+v+"\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				flags = []string{"--secrets-file", sf}
			case "store":
				state := t.TempDir()
				cmd := exec.Command(sluiceBin(t), "secret", "set", "LEAK_TOKEN", "--state-dir", state)
				cmd.Stdin = strings.NewReader(v)
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("secret set: %v\n%s", err, out)
				}
				flags = []string{"--state-dir", state}
			}
			ready, done := filepath.Join(pub, "ready"), filepath.Join(pub, "done")
			hostHits := make(chan []string, 1)
			go func() {
				var hits []string
				defer func() { hostHits <- hits }()
				deadline := time.Now().Add(60 * time.Second)
				for time.Now().Before(deadline) {
					if _, err := os.Stat(ready); err == nil {
						break
					}
					time.Sleep(20 * time.Millisecond)
				}
				self := strconv.Itoa(os.Getpid())
				ents, _ := os.ReadDir("/proc")
				for _, e := range ents {
					if _, err := strconv.Atoi(e.Name()); err != nil || e.Name() == self {
						continue // this test process set the variables itself
					}
					for _, f := range []string{"environ", "cmdline"} {
						if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), f)); err == nil && strings.Contains(string(b), v) {
							cl, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
							hits = append(hits, fmt.Sprintf("/proc/%s/%s (%q)", e.Name(), f, strings.ReplaceAll(string(cl), "\x00", " ")))
						}
					}
				}
				_ = os.WriteFile(done, nil, 0o644)
			}()
			script := `curl -sS --max-time 10 "$0"; echo
echo ---env; env
echo ---procs; for p in /proc/[0-9]*; do echo "$p"; tr '\0' '\n' < "$p/environ"; tr '\0' ' ' < "$p/cmdline"; echo; done
touch "$1"; i=0; while [ ! -e "$2" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; echo ---end`
			args := append(append(flags, "--"), "sh", "-c", script, url, ready, done)
			out, code := w.run(t, pol, args...)
			hits := <-hostHits
			if code != 0 || !strings.Contains(out, "hello from upstream /leak") || !strings.Contains(out, "---end") {
				t.Fatalf("%s: exit %d\n%s", source, code, strings.ReplaceAll(out, v, "[the secret]"))
			}
			reqs := w.api.Requests()
			if len(reqs) == 0 || reqs[len(reqs)-1].Header.Get("Authorization") != "Bearer "+v {
				t.Fatal("the upstream did not get the injected secret")
			}
			if !strings.Contains(out, "PATH=") || !strings.Contains(out, "/proc/1\n") {
				t.Fatalf("the listing from inside is incomplete (the check could not fail):\n%.2000s", out)
			}
			if strings.Contains(out, v) {
				t.Errorf("the secret is visible inside the sandbox (environ, cmdline or env)")
			}
			for _, n := range []string{"LEAK_TOKEN=", "INNOCENT_LOOKING="} {
				if strings.Contains(out, n) {
					t.Errorf("the sandbox's environment has %s", n)
				}
			}
			for _, h := range hits {
				t.Errorf("the secret is on the host at %s while the sandbox runs", h)
			}
		})
	}
}

// TestRunDefaultUser: without --user, CMD runs as the user behind sudo, or
// else as a uid from the documented range; either way with a writable home.
func TestRunDefaultUser(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.user = ""
	script := `echo "uid=$(id -u) gid=$(id -g) home=$HOME"; touch "$HOME/.x" && echo HOME-WRITABLE`
	w.env = []string{"SUDO_UID=65534", "SUDO_GID=65534"}
	out, code := w.run(t, "", "sh", "-c", script)
	if code != 0 || !strings.Contains(out, "uid=65534 gid=65534 home=/") || !strings.Contains(out, "HOME-WRITABLE") ||
		strings.Contains(out, "home=/root") {
		t.Fatalf("behind sudo as 65534: exit %d\n%s", code, out)
	}
	w.env = []string{"SUDO_UID=", "SUDO_GID="}
	out, code = w.run(t, "", "sh", "-c", script)
	var uid int
	if i := strings.Index(out, "uid="); i >= 0 {
		fmt.Sscanf(out[i:], "uid=%d", &uid)
	}
	if code != 0 || uid < 2100000000 || uid >= 2100000000+65536 || !strings.Contains(out, "HOME-WRITABLE") {
		t.Fatalf("no sudo: exit %d, uid %d, want one from 2100000000-2100065535 with a writable home\n%s", code, uid, out)
	}
}
