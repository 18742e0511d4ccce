package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/cgroup"
	"github.com/sluice-dev/sluice/pkg/testutil"
)

// sandboxProc starts a long-lived process in a fresh cgroup (and, when
// netns is set, in that network namespace), so that `attach --pid` finds
// both.
func sandboxProc(t *testing.T, netns string) (cg string, pid int) {
	t.Helper()
	cg, _ = testutil.Cgroup(t)
	var cmd *exec.Cmd
	if netns != "" {
		cmd = exec.Command("ip", "netns", "exec", netns, "sleep", "300")
	} else {
		cmd = exec.Command("sleep", "300")
	}
	if err := testutil.StartInCgroup(cmd, cg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// ip netns exec execs sleep in place: wait until it has.
	testutil.WaitFor(t, "the sandbox process to exec sleep", func() bool {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", cmd.Process.Pid))
		return strings.TrimSpace(string(comm)) == "sleep"
	})
	return cg, cmd.Process.Pid
}

// inSandbox runs a command in the sandbox's cgroup (and netns).
func inSandbox(t *testing.T, cg, netns string, args ...string) (string, error) {
	t.Helper()
	if netns != "" {
		args = append([]string{"ip", "netns", "exec", netns}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = os.Environ()
	out, err := testutil.RunInCgroup(cmd, cg)
	return string(out), err
}

func writePolicy(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func curlArgs(w *world, host string) []string {
	return []string{"curl", "-sS", "--max-time", "5", "--cacert", w.api.CAFile,
		fmt.Sprintf("https://%s:%d/x", host, w.api.Port)}
}

// twoHostWorld is a world whose HTTPS upstream serves a.test and b.test,
// both resolving to 127.0.0.1: one host for each of two sandboxes.
func twoHostWorld(t *testing.T) *world {
	t.Helper()
	w := newWorld(t)
	w.dns.Set("a.test", "127.0.0.1")
	w.dns.Set("b.test", "127.0.0.1")
	api, err := testutil.StartHTTPS(t.TempDir(), []string{"a.test", "b.test"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(api.Close)
	w.api = api
	return w
}

func TestDaemonTwoSandboxesDifferentPolicies(t *testing.T) {
	t.Parallel()
	w := twoHostWorld(t)
	d := startDaemon(t, w, daemonOpts{})
	pa := writePolicy(t, w.dir, "a.yaml", "version: 1\nrules:\n  - name: a\n    hosts: [a.test]\n")
	pb := writePolicy(t, w.dir, "b.yaml", "version: 1\nrules:\n  - name: b\n    hosts: [b.test]\n")

	cgA, pidA := sandboxProc(t, "")
	ns := testutil.Netns(t)
	cgB, pidB := sandboxProc(t, ns)
	if out, err := d.cli("attach", "--policy", pa, "--pid", fmt.Sprint(pidA), "--name", "sa"); err != nil {
		t.Fatalf("attach sa: %v\n%s", err, out)
	}
	if out, err := d.cli("attach", "--policy", pb, "--pid", fmt.Sprint(pidB), "--name", "sb"); err != nil {
		t.Fatalf("attach sb: %v\n%s", err, out)
	}
	for _, c := range []struct {
		cg, ns, host string
		ok           bool
	}{
		{cgA, "", "a.test", true},
		{cgA, "", "b.test", false},
		{cgB, ns, "b.test", true},
		{cgB, ns, "a.test", false},
	} {
		out, err := inSandbox(t, c.cg, c.ns, curlArgs(w, c.host)...)
		got := err == nil && strings.Contains(out, "hello from upstream")
		if got != c.ok {
			t.Errorf("sandbox netns=%q curl %s: ok=%v, want %v\n%s", c.ns, c.host, got, c.ok, out)
		}
	}
	// The sandbox in its own namespace really has no route out: a direct
	// connection to the host's loopback API is impossible there.
	if out, err := exec.Command("ip", "netns", "exec", ns, "curl", "-sS", "--max-time", "2", "--cacert", w.api.CAFile,
		fmt.Sprintf("https://127.0.0.1:%d/x", w.api.Port)).CombinedOutput(); err == nil {
		t.Fatalf("the test netns reaches the host directly: %s", out)
	}
	// A second attach of the same cgroup under another name is refused,
	// naming the existing sandbox.
	out, err := d.cli("attach", "--policy", pa, "--pid", fmt.Sprint(pidA), "--name", "other")
	if err == nil || !strings.Contains(out, `"sa"`) {
		t.Fatalf("double attach: err=%v\n%s", err, out)
	}
	// Same name again replaces the policy live.
	if out, err := d.cli("attach", "--policy", pb, "--pid", fmt.Sprint(pidA), "--name", "sa"); err != nil {
		t.Fatalf("replace policy: %v\n%s", err, out)
	}
	if out, err := inSandbox(t, cgA, "", curlArgs(w, "b.test")...); err != nil {
		t.Fatalf("after policy replace, b.test should work: %v\n%s", err, out)
	}
}

func TestDaemonKill9FailsClosedAndRecovers(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	d := startDaemon(t, w, daemonOpts{})
	p := writePolicy(t, w.dir, "p.yaml", "version: 1\nrules:\n  - name: p\n    hosts: [plain.test]\n")
	cg, pid := sandboxProc(t, "")
	if out, err := d.cli("attach", "--policy", p, "--pid", fmt.Sprint(pid), "--name", "k9"); err != nil {
		t.Fatalf("attach: %v\n%s", err, out)
	}
	if out, err := inSandbox(t, cg, "", curlArgs(w, "plain.test")...); err != nil {
		t.Fatalf("before kill: %v\n%s", err, out)
	}
	before := len(w.api.Requests())
	d.kill9()
	// While the daemon is down: refused, never unfiltered. Both by name and
	// by the address the name had.
	if out, err := inSandbox(t, cg, "", curlArgs(w, "plain.test")...); err == nil {
		t.Fatalf("connection succeeded while the daemon was down:\n%s", out)
	}
	if out, err := inSandbox(t, cg, "", "curl", "-sS", "--max-time", "3", "--cacert", w.api.CAFile,
		"--resolve", fmt.Sprintf("plain.test:%d:127.0.0.1", w.api.Port), fmt.Sprintf("https://plain.test:%d/x", w.api.Port)); err == nil {
		t.Fatalf("connection by address succeeded while the daemon was down:\n%s", out)
	}
	if n := len(w.api.Requests()); n != before {
		t.Fatalf("upstream got %d requests while the daemon was down", n-before)
	}
	// sluice blocked reads the pinned maps without the daemon.
	if out, err := exec.Command(sluiceBin(t), "blocked", "--pin-dir", w.pin, "--state-dir", d.state).CombinedOutput(); err != nil {
		t.Fatalf("sluice blocked while the daemon is down: %v\n%s", err, out)
	}
	d.start()
	var out string
	var err error
	for i := 0; i < 20; i++ { // the resolver may need a moment
		if out, err = inSandbox(t, cg, "", curlArgs(w, "plain.test")...); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("after restart, with no re-attach: %v\n%s\ndaemon log:\n%s", err, out, d.log)
	}
}

func TestDaemonDetachLeavesNothing(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	d := startDaemon(t, w, daemonOpts{})
	p := writePolicy(t, w.dir, "p.yaml", "version: 1\nrules:\n  - name: p\n    hosts: [plain.test]\n")
	cg, pid := sandboxProc(t, "")
	out, err := d.cli("attach", "--policy", p, "--pid", fmt.Sprint(pid), "--name", "det", "--json")
	if err != nil {
		t.Fatalf("attach: %v\n%s", err, out)
	}
	var info struct {
		ProxyPort uint16 `json:"proxy_port"`
		DNSPort   uint16 `json:"dns_port"`
		CgroupID  uint64 `json:"cgroup_id"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatal(err)
	}
	inSandbox(t, cg, "", curlArgs(w, "plain.test")...)
	inSandbox(t, cg, "", "curl", "-sS", "--max-time", "2", "http://127.0.0.1:9/") // a refusal to count
	if out, err := d.cli("detach", "det"); err != nil {
		t.Fatalf("detach: %v\n%s", err, out)
	}
	if entries, _ := os.ReadDir(filepath.Join(w.pin, "links")); len(entries) != 0 {
		t.Fatalf("pinned links left: %d", len(entries))
	}
	for _, p := range []uint16{info.ProxyPort, info.DNSPort} {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
			c.Close()
			t.Fatalf("listener on port %d still open", p)
		}
	}
	files, _ := filepath.Glob(filepath.Join(d.state, "sandboxes", "det*"))
	if len(files) != 0 {
		t.Fatalf("state files left: %v", files)
	}
	out2, _ := exec.Command(sluiceBin(t), "blocked", "--json", "--pin-dir", w.pin).CombinedOutput()
	if strings.Contains(string(out2), fmt.Sprint(info.CgroupID)) {
		t.Fatalf("counters left: %s", out2)
	}
	out3, _ := exec.Command("bpftool", "cgroup", "show", cg).CombinedOutput()
	if strings.Contains(string(out3), "sluice") {
		t.Fatalf("programs still attached:\n%s", out3)
	}
}

func TestDaemonControlSocketRejectsBadCallers(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	d := startDaemon(t, w, daemonOpts{})
	st, err := os.Stat(d.socket)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want 0600", st.Mode().Perm())
	}
	// A non-root caller is refused by the file mode...
	cmd := exec.Command(sluiceBin(t), "list", "--socket", d.socket)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "permission denied") {
		t.Fatalf("non-root list: err=%v\n%s", err, out)
	}
	// ...and by the peer credential check even if the mode were opened up.
	os.Chmod(d.socket, 0o666)
	os.Chmod(filepath.Dir(d.socket), 0o755)
	os.Chmod(filepath.Dir(filepath.Dir(d.socket)), 0o755) // t.TempDir's parent is 0700
	cmd = exec.Command(sluiceBin(t), "list", "--socket", d.socket)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "root only") {
		t.Fatalf("non-root list with an open socket: err=%v\n%s", err, out)
	}
	os.Chmod(d.socket, 0o600)
	// Malformed requests get clear errors and the daemon keeps running.
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return net.Dial("unix", d.socket)
	}}}
	for _, body := range []string{"{", `{"name":"x","bogus":1}`, `{"name":"bad name!","pid":1,"policy":"version: 1"}`,
		`{"name":"x","pid":1,"policy":"version: 9\n"}`} {
		resp, err := hc.Post("http://sluice/v1/sandboxes", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		var e struct{ Error string }
		json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || e.Error == "" {
			t.Errorf("body %q: status %d error %q, want 400 with a message", body, resp.StatusCode, e.Error)
		}
	}
	// Attaching a cgroup that holds the daemon (here the root cgroup) would
	// cut the daemon's own upstream connections: refused.
	pol := writePolicy(t, w.dir, "p.yaml", "version: 1\nrules:\n  - name: p\n    hosts: [plain.test]\n")
	mnt, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := d.cli("attach", "--policy", pol, "--cgroup", mnt, "--name", "everything"); err == nil || !strings.Contains(out, "contains the sluice daemon") {
		t.Fatalf("attach of the root cgroup: err=%v\n%s", err, out)
	}
	if out, err := d.cli("list"); err != nil {
		t.Fatalf("daemon died after malformed requests: %v\n%s", err, out)
	}
}

func TestDaemonLogsStream(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	d := startDaemon(t, w, daemonOpts{})
	p := writePolicy(t, w.dir, "p.yaml", "version: 1\nrules:\n  - name: p\n    hosts: [plain.test]\n")
	cg, pid := sandboxProc(t, "")
	out := &syncBuffer{}
	logs := exec.Command(sluiceBin(t), "logs", "st", "--follow", "--stream", "--json", "--socket", d.socket)
	logs.Stdout, logs.Stderr = out, out
	if err := logs.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { logs.Process.Kill(); logs.Wait() }()
	if o, err := d.cli("attach", "--policy", p, "--pid", fmt.Sprint(pid), "--name", "st"); err != nil {
		t.Fatalf("attach: %v\n%s", err, o)
	}
	// The query repeats until the stream shows it: logs may subscribe after
	// the first one.
	deadline := time.Now().Add(testutil.WaitTimeout)
	for time.Now().Before(deadline) && !strings.Contains(out.String(), `"qname":"nope.test"`) {
		inSandbox(t, cg, "", "getent", "hosts", "nope.test")
	}
	if !strings.Contains(out.String(), `"qname":"nope.test"`) || !strings.Contains(out.String(), `"decision":"deny"`) {
		t.Fatalf("the live stream did not carry the DNS refusal:\n%s", out.String())
	}
}
