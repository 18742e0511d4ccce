package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/cgroup"
)

// containerdEngine is a private containerd for one test (own root, state
// and socket; the CRI plugin off), driven with ctr.
type containerdEngine struct {
	dir, socket, ns string
	cmd             *exec.Cmd
	log             *syncBuffer
}

func startContainerd(t *testing.T) *containerdEngine {
	t.Helper()
	for _, tool := range []string{"containerd", "ctr", "containerd-shim-runc-v2", "runc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: apt-get install containerd runc (scripts/deps.sh installs docker.io, which brings them)", tool)
		}
	}
	dir, err := os.MkdirTemp("", "sk-ctd-")
	if err != nil {
		t.Fatal(err)
	}
	e := &containerdEngine{dir: dir, socket: filepath.Join(dir, "c.sock"), ns: "sluicetest", log: &syncBuffer{}}
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte("version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.cmd = exec.Command("containerd", "--config", cfg, "--root", filepath.Join(dir, "root"),
		"--state", filepath.Join(dir, "state"), "--address", e.socket)
	e.cmd.Stdout, e.cmd.Stderr = e.log, e.log
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := e.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() { e.stop(t) })
	waitFor(t, "containerd to serve", 30*time.Second, func() bool {
		_, err := e.ctr(10*time.Second, "version")
		return err == nil
	})
	return e
}

// taskState is the runtime v2 task state directory sluice reads.
func (e *containerdEngine) taskState() string {
	return filepath.Join(e.dir, "state", "io.containerd.runtime.v2.task")
}

func (e *containerdEngine) ctr(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ctr", append([]string{"--address", e.socket, "--namespace", e.ns}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// remove kills and deletes a container's task and the container: the shim
// then exits.
func (e *containerdEngine) remove(id string) {
	_, _ = e.ctr(20*time.Second, "task", "kill", "--signal", "SIGKILL", id)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := e.ctr(20*time.Second, "task", "delete", id); err == nil || strings.Contains(err.Error(), "not found") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, _ = e.ctr(20*time.Second, "container", "delete", id)
}

func (e *containerdEngine) stop(t *testing.T) {
	if out, err := e.ctr(20*time.Second, "container", "list", "--quiet"); err == nil {
		for _, id := range strings.Fields(out) {
			e.remove(id)
		}
	}
	stopEngine(e.cmd, e.dir)
}

// TestContainerdFencedAttach: containerd by its own API (ctr), a container
// placed below a fence: fenced at its first instruction, attached with
// --runtime containerd (the shim's task state), the image's trust store
// verifies the interception; deleting the task detaches the sandbox.
func TestContainerdFencedAttach(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	fence, fpath := fenceCgroup(t)
	d := startDaemon(t, w, daemonOpts{extra: []string{"--fence", fence}})
	eng := startContainerd(t)
	forbidden, hits := forbiddenListener(t)
	forbiddenAddr := fmt.Sprintf("127.0.0.2:%d", forbidden)
	apiAddr := fmt.Sprintf("127.0.0.1:%d", w.api.Port)
	pol := writePolicy(t, w.dir, "p.yaml", `version: 1
rules:
  - name: api
    hosts: [plain.test]
    headers:
      - {name: X-Fleet, type: plaintext, value: "containerd"}
`)
	rootfs := filepath.Join(eng.dir, "rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		t.Fatal(err)
	}
	untar := exec.Command("tar", "-C", rootfs, "-xf", "-")
	untar.Stdin = imageTar(t)
	if out, err := untar.CombinedOutput(); err != nil {
		t.Fatalf("unpacking the image: %v\n%s", err, out)
	}
	id := "ctd1"
	logFile := filepath.Join(eng.dir, "ctd1.log")
	if _, err := eng.ctr(time.Minute, "run", "-d", "--net-host", "--cgroup", "/"+fence+"/"+id, "--log-uri", "file://"+logFile,
		"--rootfs", rootfs, id, "/bin/fleetclient", "first", forbiddenAddr, apiAddr, "plain.test"); err != nil {
		t.Fatalf("%v\ncontainerd log:\n%s", err, eng.log)
	}
	var out string
	waitFor(t, "the container's first output", 30*time.Second, func() bool {
		data, _ := os.ReadFile(logFile)
		out = string(data)
		return strings.Contains(out, "done")
	})
	for _, want := range []string{"tcp " + forbiddenAddr + " error EPERM", "tcp " + apiAddr + " error EPERM", "dns plain.test error NXDOMAIN"} {
		if !strings.Contains(out, want) {
			t.Errorf("first instruction: want %q in\n%s", want, out)
		}
	}
	if out, err := d.cli("attach", "--policy", pol, "--container", id, "--runtime", "containerd",
		"--containerd-state", eng.taskState(), "--name", "ctd1"); err != nil {
		t.Fatalf("attach --container (containerd): %v\n%s\n%s", err, out, d.log)
	}
	cgid := listedCgroupID(t, d, "ctd1")
	if cg, err := cgroup.OfPID(mustTaskPID(t, eng, id)); err != nil || !strings.HasPrefix(cg, fpath+"/") {
		t.Fatalf("container cgroup %s (%v) is not below the fence %s", cg, err, fpath)
	}
	got, _ := eng.ctr(30*time.Second, "task", "exec", "--exec-id", "e1", id, "/bin/fleetclient", "https", fmt.Sprintf("https://plain.test:%d/x", w.api.Port))
	if !strings.HasPrefix(got, "ok 200 hello from upstream /x") {
		t.Fatalf("attached: GET https://plain.test with the image's trust store: %q\ndaemon log:\n%s", got, d.log)
	}
	if got, _ := eng.ctr(30*time.Second, "task", "exec", "--exec-id", "e2", id, "/bin/fleetclient", "tcp", forbiddenAddr); got != "error EPERM" {
		t.Errorf("attached: forbidden listener: %q, want error EPERM", got)
	}
	eng.remove(id)
	waitFor(t, "ctd1 to leave sluice list", 10*time.Second, func() bool { return listedCgroupID(t, d, "ctd1") == 0 })
	if _, err := os.Stat(filepath.Join(w.pin, "links", fmt.Sprint(cgid))); !os.IsNotExist(err) {
		t.Errorf("pinned links still present: %v", err)
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("the forbidden listener received %d connections", n)
	}
}

func mustTaskPID(t *testing.T, e *containerdEngine, id string) int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(e.taskState(), e.ns, id, "init.pid"))
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if _, err := fmt.Sscan(string(data), &pid); err != nil {
		t.Fatal(err)
	}
	return pid
}
