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

	"github.com/sluice-dev/sluice/pkg/api"
	"github.com/sluice-dev/sluice/pkg/containers"
	"github.com/sluice-dev/sluice/pkg/testutil"
)

// The OCI hook end to end (moved from cmd/sluice/ocihook_test.go, which keeps
// the hook's request tests against a fake daemon socket).

// TestOCIHookAttachesRealProcess is the hook path end to end: a process in
// a fresh cgroup and network namespace (what a runtime has created at
// createRuntime), the hook binary run with that process's OCI state on
// stdin, a real daemon. The sandbox then reaches its allowed host through
// sluice and nothing else; the poststop call detaches it.
func TestOCIHookAttachesRealProcess(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.dns.Set("a.test", "127.0.0.1")
	d := startDaemon(t, w, daemonOpts{})
	netns := testutil.Netns(t)
	cg, pid := sandboxProc(t, netns)
	policies := t.TempDir()
	writePolicy(t, policies, "agent.yaml", "version: 1\nrules:\n  - name: a\n    hosts: [allowed.test]\n")
	id := testutil.RandomName("ctr")
	ann := map[string]string{"sluice.dev/policy": "agent", "sluice.dev/name": "hooked"}

	hook := func(state string) (string, error) {
		cmd := exec.Command(sluiceBin(t), "oci-hook", "--socket", d.socket, "--policy-dir", policies)
		cmd.Stdin = strings.NewReader(state)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := hook(ociState(id, "created", pid, ann))
	if err != nil {
		t.Fatalf("hook (createRuntime): %v\n%s", err, out)
	}
	lout, err := d.cli("list", "--json")
	if err != nil {
		t.Fatal(err, lout)
	}
	var infos []api.Info
	if err := json.Unmarshal([]byte(lout), &infos); err != nil {
		t.Fatal(err)
	}
	// (Info.Netns is not filled by the daemon yet; reaching the allowed
	// host from a netns with only loopback proves the listeners are there.)
	own := infos[:0] // without the host's `sluice run` sandboxes (other tests)
	for _, i := range infos {
		if i.RunPID == 0 {
			own = append(own, i)
		}
	}
	infos = own
	if len(infos) != 1 || infos[0].Name != "hooked" || infos[0].Cgroup != cg {
		t.Fatalf("after the hook the daemon has %+v, want sandbox hooked on %s", infos, cg)
	}
	if got, err := inSandbox(t, cg, netns, curlArgs(w, "allowed.test")...); err != nil {
		t.Fatalf("allowed host from the hooked container: %v\n%s", err, got)
	}
	if got, err := inSandbox(t, cg, netns, curlArgs(w, "plain.test")...); err == nil {
		t.Fatalf("a host outside the policy was reachable from the hooked container:\n%s", got)
	}
	out, err = hook(ociState(id, "stopped", 0, ann))
	if err != nil {
		t.Fatalf("hook (poststop): %v\n%s", err, out)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(d.names()) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("still attached after poststop: %v", d.names())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestOCIHookWithRunc runs a real container with runc, with sluice oci-hook
// configured as its createRuntime and poststop hooks in config.json: the
// container is attached before its process runs, reaches only its allowed
// host, and is detached when runc deletes it.
func TestOCIHookWithRunc(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	runc, err := exec.LookPath("runc")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("runc is not installed (scripts/deps.sh installs it)")
		}
		t.Skip("runc is not installed (a host tool, not a privilege; fails under CI=true, where scripts/deps.sh installs it)")
	}
	d := startDaemon(t, w, daemonOpts{})
	netns := testutil.Netns(t) // the container joins it: only lo, up (what CNI would hand over)
	policies := t.TempDir()
	writePolicy(t, policies, "agent.yaml", "version: 1\nrules:\n  - name: a\n    hosts: [allowed.test]\n")

	bundle := t.TempDir()
	for _, dir := range []string{"usr", "etc", "proc", "dev", "tmp", "sys", "run", "world"} {
		if err := os.MkdirAll(filepath.Join(bundle, "rootfs", dir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range []string{"bin", "lib", "lib64", "sbin"} {
		os.Symlink("usr/"+l, filepath.Join(bundle, "rootfs", l))
	}
	id := testutil.RandomName("sluice-test-runc-")
	hook := map[string]any{"path": sluiceBin(t), "args": []string{"sluice", "oci-hook", "--socket", d.socket, "--policy-dir", policies}, "timeout": 20}
	spec := map[string]any{
		"ociVersion": "1.0.2",
		"process": map[string]any{
			"terminal": false, "user": map[string]any{"uid": 0, "gid": 0}, "cwd": "/",
			"args": []string{"sleep", "300"},
			"env":  []string{"PATH=/usr/bin:/usr/sbin:/bin:/sbin"},
			"capabilities": map[string]any{
				"bounding": []string{"CAP_KILL"}, "effective": []string{"CAP_KILL"}, "permitted": []string{"CAP_KILL"},
			},
			"noNewPrivileges": true,
		},
		"root":     map[string]any{"path": "rootfs", "readonly": true},
		"hostname": "runc-test",
		"mounts": []map[string]any{
			{"destination": "/proc", "type": "proc", "source": "proc"},
			{"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": []string{"nosuid", "nodev"}},
			{"destination": "/usr", "type": "bind", "source": "/usr", "options": []string{"rbind", "ro"}},
			{"destination": "/etc", "type": "bind", "source": "/etc", "options": []string{"rbind", "ro"}},
			{"destination": "/world", "type": "bind", "source": w.dir, "options": []string{"rbind", "ro"}},
		},
		"hooks":       map[string]any{"createRuntime": []any{hook}, "poststop": []any{hook}},
		"annotations": map[string]string{"sluice.dev/policy": "agent", "sluice.dev/name": "runc-test"},
		"linux": map[string]any{
			"cgroupsPath": "/" + id,
			"namespaces": []map[string]any{
				{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
				{"type": "network", "path": "/var/run/netns/" + netns},
			},
			"maskedPaths":   []string{"/proc/kcore", "/proc/keys", "/sys/firmware"},
			"readonlyPaths": []string{"/proc/sys", "/proc/sysrq-trigger"},
		},
	}
	data, _ := json.MarshalIndent(spec, "", " ")
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	rc := func(args ...string) (string, error) {
		out, err := exec.Command(runc, append([]string{"--root", state}, args...)...).CombinedOutput()
		return string(out), err
	}
	// The detached container inherits runc's stdio: give it a file, not a
	// pipe that would hold `runc run -d` until the container exits.
	logPath := filepath.Join(t.TempDir(), "runc.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	run := exec.Command(runc, "--root", state, "run", "-d", "--bundle", bundle, id)
	run.Stdout, run.Stderr = logf, logf
	if err := run.Run(); err != nil {
		out, _ := os.ReadFile(logPath)
		t.Fatalf("runc run: %v\n%s", err, out)
	}
	deleted := false
	t.Cleanup(func() {
		if !deleted {
			rc("delete", "-f", id)
		}
	})
	if names := d.names(); len(names) != 1 || names[0] != "runc-test" {
		t.Fatalf("after runc run the daemon has %v, want runc-test", names)
	}
	caFile := "/world/" + filepath.Base(w.api.CAFile)
	curl := func(host string) (string, error) {
		return rc("exec", id, "curl", "-sS", "--max-time", "5", "--cacert", caFile, fmt.Sprintf("https://%s:%d/x", host, w.api.Port))
	}
	if out, err := curl("allowed.test"); err != nil {
		t.Fatalf("allowed host from the runc container: %v\n%s", err, out)
	}
	if out, err := curl("plain.test"); err == nil {
		t.Fatalf("a host outside the policy was reachable from the runc container:\n%s", out)
	}
	if out, err := rc("kill", id, "KILL"); err != nil {
		t.Fatalf("runc kill: %v\n%s", err, out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ := rc("state", id)
		if strings.Contains(out, `"stopped"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("container did not stop:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := rc("delete", id); err != nil {
		t.Fatalf("runc delete (poststop hook): %v\n%s", err, out)
	}
	deleted = true
	if names := d.names(); len(names) != 0 {
		t.Fatalf("still attached after the poststop hook: %v", names)
	}
}

// ociState is the OCI state document a runtime hands its hooks on stdin.
func ociState(id, status string, pid int, ann map[string]string) string {
	data, _ := json.Marshal(containers.OCIState{OCIVersion: "1.2.0", ID: id, Status: status, PID: pid, Bundle: "/run/bundle/" + id, Annotations: ann})
	return string(data)
}
