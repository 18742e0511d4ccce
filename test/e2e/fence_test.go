package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/blocked"
	"github.com/sluice-dev/sluice/pkg/cgroup"
	"github.com/sluice-dev/sluice/pkg/testutil"
)

// fenceCgroup returns a fresh fence name (relative to the cgroup2 mount) and
// its path; the directory and everything below it is removed at the end.
// Tests use their own fence rather than a shared one such as "docker".
func fenceCgroup(t *testing.T) (name, path string) {
	t.Helper()
	mnt, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	name = testutil.RandomName("sluice-fence-")
	path = filepath.Join(mnt, name)
	t.Cleanup(func() {
		if err := cgroup.Remove(path, 10*time.Second); err != nil && !os.IsNotExist(err) {
			t.Errorf("cleanup: %v", err)
		}
	})
	return name, path
}

// readAudit parses the daemon's audit log.
func readAudit(t *testing.T, path string) []audit.Event {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var evs []audit.Event
	for _, line := range strings.Split(string(data), "\n") {
		var ev audit.Event
		if line != "" && json.Unmarshal([]byte(line), &ev) == nil {
			evs = append(evs, ev)
		}
	}
	return evs
}

// TestDaemonFenceRefusesUntilAttach: a cgroup created below a fence is
// refused everything (EPERM, NXDOMAIN) from its first process on; attached,
// its policy applies; detached, it is fenced again. The fence's refusals
// show under "fenced" in sluice blocked.
func TestDaemonFenceRefusesUntilAttach(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	fence, fpath := fenceCgroup(t)
	d := startDaemon(t, w, daemonOpts{extra: []string{"--fence", fence}})
	if _, err := os.Stat(fpath); err != nil {
		t.Fatalf("the daemon did not create the fence cgroup: %v", err)
	}
	forbidden, hits := forbiddenListener(t)
	forbiddenAddr := fmt.Sprintf("127.0.0.2:%d", forbidden)
	apiAddr := fmt.Sprintf("127.0.0.1:%d", w.api.Port)

	child, err := cgroup.Create(fpath, "ctr")
	if err != nil {
		t.Fatal(err)
	}
	// Before attach: nothing, not even what the policy will allow.
	for _, target := range []string{forbiddenAddr, apiAddr} {
		if got := testutil.RunProbe(t, child, "tcp", target); got != "error EPERM" {
			t.Errorf("fenced connect to %s: %q, want error EPERM", target, got)
		}
	}
	if got := testutil.RunProbe(t, child, "dns", "udp|8.8.8.8:53|plain.test.|A"); !strings.HasPrefix(got, "ok NXDOMAIN") {
		t.Errorf("fenced DNS: %q, want NXDOMAIN", got)
	}
	// A grandchild (nested cgroup) is fenced too.
	grand, err := cgroup.Create(child, "inner")
	if err != nil {
		t.Fatal(err)
	}
	if got := testutil.RunProbe(t, grand, "tcp", apiAddr); got != "error EPERM" {
		t.Errorf("fenced nested connect: %q, want error EPERM", got)
	}

	p := writePolicy(t, w.dir, "p.yaml", "version: 1\nrules:\n  - name: p\n    hosts: [plain.test]\n")
	if out, err := d.cli("attach", "--policy", p, "--cgroup", child, "--name", "ctr"); err != nil {
		t.Fatalf("attach: %v\n%s", err, out)
	}
	if out, err := inSandbox(t, child, "", curlArgs(w, "plain.test")...); err != nil || !strings.Contains(out, "hello from upstream") {
		t.Fatalf("attached below the fence: curl plain.test: %v\n%s\n%s", err, out, d.log)
	}
	if out, err := inSandbox(t, grand, "", curlArgs(w, "plain.test")...); err != nil {
		t.Fatalf("nested cgroup of the attached sandbox: %v\n%s", err, out)
	}
	if got := testutil.RunProbe(t, child, "tcp", forbiddenAddr); got != "error EPERM" {
		t.Errorf("attached: connect to the forbidden listener: %q, want error EPERM", got)
	}
	// A sibling below the fence stays fenced.
	sib, err := cgroup.Create(fpath, "other")
	if err != nil {
		t.Fatal(err)
	}
	if got := testutil.RunProbe(t, sib, "tcp", apiAddr); got != "error EPERM" {
		t.Errorf("sibling below the fence: %q, want error EPERM", got)
	}

	if out, err := d.cli("detach", "ctr"); err != nil {
		t.Fatalf("detach: %v\n%s", err, out)
	}
	if got := testutil.RunProbe(t, child, "tcp", apiAddr); got != "error EPERM" {
		t.Errorf("detached below the fence: %q, want error EPERM (fenced again)", got)
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("the forbidden listener received %d connections", n)
	}

	out, err := exec.Command(sluiceBin(t), "blocked", "fenced", "--json", "--pin-dir", w.pin, "--state-dir", d.state).CombinedOutput()
	if err != nil {
		t.Fatalf("sluice blocked: %v\n%s", err, out)
	}
	var rows []blocked.Row
	if err := json.Unmarshal(out, &rows); err != nil {
		t.Fatalf("sluice blocked --json: %v\n%s", err, out)
	}
	found := false
	for _, r := range rows {
		if r.Sandbox == "fenced" && r.Port == uint16(forbidden) {
			found = true
		}
	}
	if !found {
		t.Fatalf("sluice blocked shows no fenced refusal of port %d:\n%s", forbidden, out)
	}
}

// TestDaemonFenceSurvivesRestart: with the daemon killed (SIGKILL) and
// started again, a fenced cgroup stays refused throughout; the fence comes
// from the config file's fence: list this time.
func TestDaemonFenceSurvivesRestart(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	fence, fpath := fenceCgroup(t)
	cfg := writePolicy(t, w.dir, "config.yaml", "fence: ["+fence+"]\n")
	d := startDaemon(t, w, daemonOpts{extra: []string{"--config", cfg}})
	forbidden, hits := forbiddenListener(t)
	forbiddenAddr := fmt.Sprintf("127.0.0.2:%d", forbidden)
	child, err := cgroup.Create(fpath, "ctr")
	if err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		if got := testutil.RunProbe(t, child, "tcp", forbiddenAddr); got != "error EPERM" {
			t.Errorf("%s: connect: %q, want error EPERM", when, got)
		}
		if got := testutil.RunProbe(t, child, "dns", "udp|8.8.8.8:53|plain.test.|A"); strings.Contains(got, "NOERROR") {
			t.Errorf("%s: DNS answered: %q", when, got)
		}
	}
	check("daemon up")
	d.kill9()
	check("daemon killed")
	d.start()
	check("daemon restarted")
	// The restarted daemon answers DNS for the fence again (NXDOMAIN).
	if got := testutil.RunProbe(t, child, "dns", "udp|8.8.8.8:53|plain.test.|A"); !strings.HasPrefix(got, "ok NXDOMAIN") {
		t.Errorf("after restart: fenced DNS: %q, want NXDOMAIN", got)
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("the forbidden listener received %d connections", n)
	}
}

func hasGoneEvent(evs []audit.Event, name string) bool {
	for _, ev := range evs {
		if ev.Kind == audit.KindSandbox && ev.Sandbox == name && ev.Decision == "cgroup_gone" && strings.Contains(ev.Reason, "removed") {
			return true
		}
	}
	return false
}

// TestDaemonDetachesWhenCgroupGone: a sandbox whose cgroup is removed is
// detached by the daemon within seconds (list, pins, audit); a restarted
// daemon does the same for a recorded sandbox whose cgroup went away while
// it was down.
func TestDaemonDetachesWhenCgroupGone(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	d := startDaemon(t, w, daemonOpts{})
	p := writePolicy(t, w.dir, "p.yaml", "version: 1\nrules:\n  - name: p\n    hosts: [plain.test]\n")
	mnt, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	auditPath := filepath.Join(w.dir, "sluice-audit.jsonl") // startDaemon's --audit
	for _, c := range []struct {
		name    string
		restart bool
	}{{"gone-live", false}, {"gone-restart", true}} {
		cg, err := cgroup.Create(mnt, testutil.RandomName("sluice-test-"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cgroup.Remove(cg, 5*time.Second) })
		id, err := cgroup.ID(cg)
		if err != nil {
			t.Fatal(err)
		}
		if out, err := d.cli("attach", "--policy", p, "--cgroup", cg, "--name", c.name); err != nil {
			t.Fatalf("attach: %v\n%s", err, out)
		}
		links := filepath.Join(w.pin, "links", fmt.Sprint(id))
		if _, err := os.Stat(links); err != nil {
			t.Fatalf("no pinned links after attach: %v", err)
		}
		if c.restart {
			d.kill9()
		}
		if err := cgroup.Remove(cg, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		if c.restart {
			d.start()
		}
		waitFor(t, c.name+" to leave sluice list", 10*time.Second, func() bool {
			for _, n := range d.names() {
				if n == c.name {
					return false
				}
			}
			return true
		})
		if _, err := os.Stat(links); !os.IsNotExist(err) {
			t.Errorf("%s: pinned links still present: %v", c.name, err)
		}
		if _, err := os.Stat(filepath.Join(d.state, "sandboxes", c.name+".json")); !os.IsNotExist(err) {
			t.Errorf("%s: state record still present: %v", c.name, err)
		}
		waitFor(t, "the cgroup_gone audit event of "+c.name, 5*time.Second, func() bool { return hasGoneEvent(readAudit(t, auditPath), c.name) })
	}
}
