package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/cgroup"
	"github.com/sluice-dev/sluice/pkg/defaults"
	"github.com/sluice-dev/sluice/pkg/testutil"
)

// The end-to-end tests run the real binary (`sluice run`, `sluice daemon`)
// as a user would, with real clients inside a real cgroup, against loopback
// upstreams. They need root; under CI=true they fail instead of skipping.

func TestMain(m *testing.M) {
	testutil.MaybeRunProbe()
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

var (
	buildOnce sync.Once
	binPath   string
	binDir    string
	buildErr  error
)

// sluiceBin builds the binary once per test run, or uses $SLUICE_BIN.
func sluiceBin(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if p := os.Getenv("SLUICE_BIN"); p != "" {
			binPath = p // a prebuilt binary (make test passes bin/sluice)
			return
		}
		binDir, buildErr = os.MkdirTemp("", "sluice-e2e-bin-")
		if buildErr != nil {
			return
		}
		// Tests run the binary as an unprivileged user too (the control
		// socket's caller check); MkdirTemp's 0700 would stop them at exec.
		if buildErr = os.Chmod(binDir, 0o755); buildErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "sluice")
		out, err := exec.Command("go", "build", "-o", binPath, "../../cmd/sluice").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// world is the loopback "internet" of a test: an authoritative DNS server
// for made-up names and an HTTPS API with its own CA, plus the test's own
// pin directory. Tests that use only their world, their own cgroups and
// their own daemon (startDaemon) call t.Parallel(); the ones that set
// process environment (t.Setenv), count cgroups host-wide, measure time or
// load the machine stay sequential.
type world struct {
	dir  string
	dns  *testutil.DNSServer
	api  *testutil.HTTPSServer
	pin  string
	auth string   // the audit log of the last run
	env  []string // extra environment of run's sluice and CMD (not t.Setenv: tests run in parallel)
	pids []int    // the sluice run processes started, for assertNothingLeft
	// user is the --user of w.run when the arguments give none: "root" for
	// the tests written before the sandbox boundary (issue 15), whose
	// commands read the test's 0700 directories; "" runs as sluice run's
	// default (the unprivileged per-sandbox uid). The boundary holds for
	// both.
	user string
}

func newWorld(t *testing.T) *world {
	t.Helper()
	testutil.RequirePrivileged(t)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	dnsSrv, err := testutil.StartDNS(map[string][]string{
		"allowed.test":   {"127.0.0.1"},
		"plain.test":     {"127.0.0.1"},
		"forbidden.test": {"127.0.0.1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dnsSrv.Close)
	api, err := testutil.StartHTTPS(dir, []string{"allowed.test", "plain.test"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(api.Close)
	return &world{dir: dir, dns: dnsSrv, api: api, pin: testutil.PinDir(t), user: "root"}
}

const demoSecret = "sk-e2e-5ecr3t-v4lue-7d1f0c"

// run runs `sluice run` with the demo policy (or policyFile) and returns
// its combined output and exit code. args may start with extra sluice run
// flags ended by "--".
func (w *world) run(t *testing.T, policyFile string, args ...string) (string, int) {
	t.Helper()
	if policyFile == "" {
		policyFile = "../../testdata/policies/demo.yaml"
	}
	w.auth = filepath.Join(w.dir, fmt.Sprintf("audit-%d.jsonl", time.Now().UnixNano()))
	// Extra sluice flags may come first, ended by "--".
	var flags []string
	for i, a := range args {
		if a == "--" {
			flags, args = args[:i], args[i+1:]
			break
		}
	}
	if w.user != "" && !hasUserFlag(flags) {
		flags = append([]string{"--user", w.user}, flags...)
	}
	full := append([]string{"run", "--policy", policyFile, "--name", "e2e",
		"--dns-upstream", w.dns.Addr, "--dns-allow-loopback", "--upstream-ca", w.api.CAFile,
		"--secret-env", "DEMO_TOKEN", "--audit", w.auth, "--pin-dir", w.pin}, flags...)
	full = append(append(full, "--"), args...)
	cmd := exec.Command(sluiceBin(t), full...)
	cmd.Env = append(append(os.Environ(), "DEMO_TOKEN="+demoSecret), w.env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if cmd.Process != nil {
		w.pids = append(w.pids, cmd.Process.Pid)
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("sluice run: %v", err)
	}
	if strings.Contains(out.String(), demoSecret) {
		t.Fatalf("the secret appeared in sluice run's output:\n%s", out.String())
	}
	return out.String(), code
}

func hasUserFlag(flags []string) bool {
	for _, f := range flags {
		if f == "--user" || strings.HasPrefix(f, "--user=") {
			return true
		}
	}
	return false
}

func (w *world) events(t *testing.T) []audit.Event {
	t.Helper()
	data, err := os.ReadFile(w.auth)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(data, []byte(demoSecret)) {
		t.Fatal("the secret appeared in the audit log")
	}
	evs, err := audit.ReadFile(w.auth)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

func TestRunCurlReachesAllowedHostWithInjectedHeader(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	url := fmt.Sprintf("https://allowed.test:%d/v1/hello", w.api.Port)
	out, code := w.run(t, "", "curl", "-sS", "--max-time", "10", url)
	if code != 0 || !strings.Contains(out, "hello from upstream /v1/hello") {
		t.Fatalf("curl through sluice: exit %d\n%s", code, out)
	}
	reqs := w.api.Requests()
	if len(reqs) != 1 || reqs[0].Header.Get("Authorization") != "Bearer "+demoSecret {
		t.Fatalf("upstream did not get the injected header: %+v", reqs)
	}
	// The proxy reported the connection with its original destination
	// and SNI.
	var conn *audit.Event
	for _, ev := range w.events(t) {
		if ev.Kind == audit.KindConn && ev.SNI == "allowed.test" {
			conn = &ev
			break
		}
	}
	if conn == nil {
		t.Fatalf("no conn event with SNI allowed.test in the audit log")
	}
	if want := fmt.Sprintf("127.0.0.1:%d", w.api.Port); conn.Dst != want {
		t.Fatalf("conn event dst %q, want %q", conn.Dst, want)
	}
	if conn.PID == 0 || conn.Comm != "curl" {
		t.Fatalf("conn event lacks the process: pid %d comm %q", conn.PID, conn.Comm)
	}
}

func TestRunForbiddenTargetsRefused(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	tcp := testutil.TCPCanary(t, "tcp4")
	udp := testutil.UDPCanary(t, "udp4")
	_, tport, _ := strings.Cut(tcp.Addr, ":")
	for _, c := range []struct{ mode, target string }{
		{"tcp", tcp.Addr},
		{"tcp", "[::ffff:127.0.0.1]:" + tport},
		{"udp", udp.Addr},
	} {
		w.env = []string{"SLUICE_TEST_PROBE=" + c.mode}
		out, code := w.run(t, "", os.Args[0], "-test.run=^$", c.target)
		if code != 0 || !strings.Contains(out, "error EPERM") {
			t.Errorf("%s %s from the sandbox: exit %d, want error EPERM:\n%s", c.mode, c.target, code, out)
		}
	}
	if tcp.Hits() != 0 || udp.Hits() != 0 {
		t.Fatalf("forbidden listeners were reached: tcp %d udp %d", tcp.Hits(), udp.Hits())
	}
}

func TestRunNestedCgroupEnforced(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	tcp := testutil.TCPCanary(t, "tcp4")
	// Inside the sandbox: make a child cgroup, move the shell there, then
	// connect. The child cgroup is below the sandbox, so it is enforced.
	mnt, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf(`set -e
cg=%s$(sed -n 's/^0:://p' /proc/self/cgroup)
mkdir "$cg/child"
echo $$ > "$cg/child/cgroup.procs"
grep -q child /proc/self/cgroup
exec "$0" -test.run='^$' %s`, mnt, tcp.Addr)
	w.env = []string{"SLUICE_TEST_PROBE=tcp"}
	out, code := w.run(t, "", "sh", "-c", script, os.Args[0])
	if code != 0 || !strings.Contains(out, "error EPERM") {
		t.Fatalf("connect from a nested cgroup: exit %d, want error EPERM:\n%s", code, out)
	}
	if tcp.Hits() != 0 {
		t.Fatal("forbidden listener reached from a nested cgroup")
	}
}

func TestRunDNS(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	out, code := w.run(t, "", "getent", "hosts", "allowed.test")
	if code != 0 || !strings.Contains(out, "127.0.0.1") {
		t.Fatalf("getent hosts allowed.test: exit %d\n%s", code, out)
	}
	out, code = w.run(t, "", "getent", "hosts", "forbidden.test")
	if code == 0 {
		t.Fatalf("getent hosts forbidden.test succeeded:\n%s", out)
	}
	if w.dns.Received("forbidden.test") {
		t.Fatal("the forbidden name reached the upstream resolver")
	}
	var denied bool
	for _, ev := range w.events(t) {
		if ev.Kind == audit.KindDNS && ev.QName == "forbidden.test" && ev.Decision == audit.DecisionDeny {
			denied = true
		}
	}
	if !denied {
		t.Fatal("no dns deny event for forbidden.test")
	}
}

func TestRunExitStatusAndCleanup(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	_, code := w.run(t, "", "sh", "-c", "exit 7")
	if code != 7 {
		t.Fatalf("exit status %d, want 7", code)
	}
	// A command killed by a signal: 128+9, and nothing left behind.
	_, code = w.run(t, "", "sh", "-c", "sleep 30 & kill -9 $$")
	if code != 137 {
		t.Fatalf("killed command: exit status %d, want 137", code)
	}
	assertNothingLeft(t, w, w.pids...)
}

func TestRunCleanupOnSIGTERM(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	cmd := exec.Command(sluiceBin(t), "run", "--policy", "../../testdata/policies/demo.yaml",
		"--dns-upstream", w.dns.Addr, "--pin-dir", w.pin, "--", "sh", "-c", "sleep 60 & sleep 60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait for the command in the sandbox cgroup, so that the signal is
	// passed on to it (a SIGTERM during the setup stops the setup instead:
	// pkg/runner TestRunSignalDuringSetup). The cgroup holds the sandbox's
	// init, sh and sleep.
	procs := filepath.Join(runCgroup(t, cmd.Process.Pid), "cgroup.procs")
	testutil.WaitFor(t, "the command in the sandbox cgroup", func() bool {
		b, _ := os.ReadFile(procs)
		return len(strings.Fields(string(b))) >= 3
	})
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("sluice run did not exit on SIGTERM")
	}
	assertNothingLeft(t, w, cmd.Process.Pid)
}

// runCgroup is the sandbox cgroup of the `sluice run` with process id pid.
// Tests look only at their own runs: other tests (and other checkouts on
// the machine) run sandboxes at the same time.
func runCgroup(t *testing.T, pid int) string {
	t.Helper()
	self, err := cgroup.Self()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(self, fmt.Sprintf("sluice-run-%d", pid))
}

// assertNothingLeft checks that the `sluice run` processes pids left no
// cgroup, run record, pinned link or counter behind.
func assertNothingLeft(t *testing.T, w *world, pids ...int) {
	t.Helper()
	if len(pids) == 0 {
		t.Fatal("no sluice run to check")
	}
	recs, _ := os.ReadDir(defaults.RunDir)
	for _, pid := range pids {
		cg := runCgroup(t, pid)
		if _, err := os.Stat(cg); err == nil {
			t.Fatalf("sandbox cgroup left behind: %s", cg)
		}
		for _, r := range recs {
			data, _ := os.ReadFile(filepath.Join(defaults.RunDir, r.Name()))
			if lines := strings.Split(string(data), "\n"); len(lines) > 1 && lines[1] == cg {
				t.Fatalf("run record left behind: %s", r.Name())
			}
		}
	}
	links, _ := os.ReadDir(filepath.Join(w.pin, "links"))
	if len(links) != 0 {
		t.Fatalf("pinned links left behind: %d", len(links))
	}
	out, err := exec.Command(sluiceBin(t), "blocked", "--json", "--pin-dir", w.pin).CombinedOutput()
	if err != nil {
		t.Fatalf("sluice blocked: %v\n%s", err, out)
	}
	var rows []map[string]any
	if err := json.Unmarshal(out, &rows); err != nil || len(rows) != 0 {
		t.Fatalf("counters left behind: %s", out)
	}
}

func TestRunAsUnprivilegedUserCannotLeaveCgroup(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	mnt, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	// As nobody, the command cannot move itself to the root cgroup.
	script := fmt.Sprintf(`id -u; echo $$ > %s/cgroup.procs && echo ESCAPED || echo stayed`, mnt)
	out, code := w.run(t, "", "--user", "65534", "--", "sh", "-c", script)
	_ = code
	if !strings.Contains(out, "65534") || !strings.Contains(out, "stayed") || strings.Contains(out, "ESCAPED") {
		t.Fatalf("run --user 65534:\n%s", out)
	}
}

// runSluice runs the sluice binary with args (no sandbox) and returns its
// exit code, stdout and stderr.
func runSluice(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(sluiceBin(t), args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("sluice %s: %v", strings.Join(args, " "), err)
	}
	return code, out.String(), errb.String()
}
