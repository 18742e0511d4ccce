package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/api"
	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/blocked"
	"github.com/sluice-dev/sluice/pkg/cgroup"
)

// dockerEngine is a private dockerd for one test: its own data root, exec
// root, pid file and socket below a temporary directory, no iptables, no
// bridge (containers use the host network), and containers placed below
// the cgroup parent the test fences. It is stopped (by pid) at cleanup.
type dockerEngine struct {
	t      *testing.T
	dir    string
	socket string
	cmd    *exec.Cmd
	log    *syncBuffer
}

// requireDocker fails (acceptance tests never skip) when docker.io is not
// installed, naming the Debian package.
func requireDocker(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"dockerd", "docker", "containerd", "runc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: apt-get install docker.io (scripts/deps.sh)", tool)
		}
	}
}

// startDockerd starts dockerd with containers below the cgroup parent
// /cgroupParent (relative to the cgroup2 mount).
func startDockerd(t *testing.T, cgroupParent string) *dockerEngine {
	t.Helper()
	requireDocker(t)
	// Short paths: containerd's sockets live below the exec root.
	dir, err := os.MkdirTemp("", "sk-dk-")
	if err != nil {
		t.Fatal(err)
	}
	e := &dockerEngine{t: t, dir: dir, socket: filepath.Join(dir, "docker.sock"), log: &syncBuffer{}}
	e.cmd = exec.Command("dockerd",
		"--data-root", filepath.Join(dir, "data"), "--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "dockerd.pid"), "--host", "unix://"+e.socket,
		"--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false", "--bridge=none",
		"--userland-proxy=false", "--cgroup-parent", "/"+cgroupParent, "--log-level", "warn")
	e.cmd.Stdout, e.cmd.Stderr = e.log, e.log
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := e.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		t.Fatalf("starting dockerd: %v", err)
	}
	t.Cleanup(e.stop)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := e.docker(10*time.Second, nil, "version", "--format", "{{.Server.Version}}"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dockerd did not come up in 60s:\n%s", e.log)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return e
}

// stop removes every container, stops dockerd by its pid and removes its
// directories (unmounting what it left mounted).
func (e *dockerEngine) stop() {
	if out, err := e.docker(30*time.Second, nil, "ps", "-aq"); err == nil {
		for _, id := range strings.Fields(out) {
			_, _ = e.docker(30*time.Second, nil, "rm", "-f", id)
		}
	}
	stopEngine(e.cmd, e.dir)
}

// docker runs the docker CLI against this engine with a timeout.
func (e *dockerEngine) docker(timeout time.Duration, stdin io.Reader, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST=unix://"+e.socket)
	cmd.Stdin = stdin
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// buildImage imports an image made from local files only (imageTar).
func (e *dockerEngine) buildImage(t *testing.T, tag string) {
	t.Helper()
	buf := imageTar(t)
	if out, err := e.docker(2*time.Minute, buf, "import", "-", tag); err != nil {
		t.Fatalf("docker import: %v\n%s", err, out)
	}
}

// imageTar is a container root file system made from local files only:
// Debian's static busybox, the static test client (testdata/fleetclient),
// and the host's CA bundle as the image's system trust store.
func imageTar(t *testing.T) *bytes.Buffer {
	t.Helper()
	client := filepath.Join(t.TempDir(), "fleetclient")
	build := exec.Command("go", "build", "-o", client, "./testdata/fleetclient")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the static client: %v\n%s", err, out)
	}
	busybox := "/bin/busybox"
	if _, err := os.Stat(busybox); err != nil {
		t.Fatalf("busybox is not installed: apt-get install busybox-static (scripts/deps.sh)")
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	addDir := func(name string) {
		_ = tw.WriteHeader(&tar.Header{Name: name + "/", Mode: 0o755, Typeflag: tar.TypeDir})
	}
	addFile := func(name, src string, mode int64) {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"bin", "etc", "etc/ssl", "etc/ssl/certs", "tmp"} {
		addDir(d)
	}
	addFile("bin/busybox", busybox, 0o755)
	_ = tw.WriteHeader(&tar.Header{Name: "bin/sh", Linkname: "busybox", Typeflag: tar.TypeSymlink, Mode: 0o777})
	addFile("bin/fleetclient", client, 0o755)
	addFile("etc/ssl/certs/ca-certificates.crt", "/etc/ssl/certs/ca-certificates.crt", 0o644)
	_ = tw.WriteHeader(&tar.Header{Name: "etc/ssl/cert.pem", Linkname: "certs/ca-certificates.crt", Typeflag: tar.TypeSymlink, Mode: 0o777})
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &buf
}

// run starts a detached container on the host network and returns its id.
func (e *dockerEngine) run(t *testing.T, image string, args ...string) string {
	t.Helper()
	id, err := e.docker(time.Minute, nil, append([]string{"run", "-d", "--network", "host", image}, args...)...)
	if err != nil {
		t.Fatalf("%v\ndockerd log:\n%s", err, e.log)
	}
	return id
}

// logs waits until the container's output contains want and returns it.
func (e *dockerEngine) logs(t *testing.T, id, want string) string {
	t.Helper()
	var out string
	waitFor(t, "container output "+strconv.Quote(want), 30*time.Second, func() bool {
		out, _ = e.docker(10*time.Second, nil, "logs", id)
		return strings.Contains(out, want)
	})
	return out
}

// lineWith returns the first line of out that starts with prefix.
func lineWith(out, prefix string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

// TestDockerFencedContainers drives a real Docker engine (acceptance of
// #19): a fenced container's first instruction reaches nothing; after
// attach --container, an allowed HTTPS host answers a client that trusts
// only the image's system store, while the forbidden listener gets nothing;
// docker rm -f detaches the sandbox by itself; a daemon killed and restarted
// leaves a fenced container fenced throughout.
func TestDockerFencedContainers(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	// The test's own fence, so that it cannot touch other containers; in
	// production it is --fence docker (Docker's default cgroup parent).
	fence, fpath := fenceCgroup(t)
	d := startDaemon(t, w, daemonOpts{extra: []string{"--fence", fence}})
	eng := startDockerd(t, fence)
	eng.buildImage(t, "sluice-fleet:test")
	forbidden, hits := forbiddenListener(t)
	forbiddenAddr := fmt.Sprintf("127.0.0.2:%d", forbidden)
	apiAddr := fmt.Sprintf("127.0.0.1:%d", w.api.Port)
	auditPath := filepath.Join(w.dir, "sluice-audit.jsonl") // startDaemon's --audit
	// The header rule makes the proxy intercept TLS: the client then sees a
	// leaf signed by the sandbox CA.
	pol := writePolicy(t, w.dir, "p.yaml", `version: 1
rules:
  - name: api
    hosts: [plain.test]
    headers:
      - {name: X-Fleet, type: plaintext, value: "1"}
`)
	t.Run("fenced from the first instruction, then attached", func(t *testing.T) {
		id := eng.run(t, "sluice-fleet:test", "/bin/fleetclient", "first", forbiddenAddr, apiAddr, "plain.test")
		out := eng.logs(t, id, "done")
		for _, want := range []string{"tcp " + forbiddenAddr + " error EPERM", "tcp " + apiAddr + " error EPERM", "dns plain.test error NXDOMAIN"} {
			if !strings.Contains(out, want) {
				t.Errorf("first instruction: want %q in\n%s", want, out)
			}
		}
		cg, err := cgroup.OfPID(containerPID(t, eng, id))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(cg, fpath+"/") {
			t.Fatalf("container cgroup %s is not below the fence %s", cg, fpath)
		}
		if out, err := d.cli("attach", "--policy", pol, "--container", id, "--runtime", "docker", "--docker-socket", eng.socket, "--name", "ctr1"); err != nil {
			t.Fatalf("attach --container: %v\n%s\n%s", err, out, d.log)
		}
		got, _ := eng.docker(30*time.Second, nil, "exec", id, "/bin/fleetclient", "https", fmt.Sprintf("https://plain.test:%d/x", w.api.Port))
		if !strings.HasPrefix(got, "ok 200 hello from upstream /x") {
			t.Fatalf("attached: GET https://plain.test with the image's trust store: %q\ndaemon log:\n%s", got, d.log)
		}
		if reqs := w.api.Requests(); len(reqs) == 0 || reqs[len(reqs)-1].Header.Get("X-Fleet") != "1" {
			t.Fatalf("the upstream did not get the intercepted request: %+v", reqs)
		}
		if got, _ := eng.docker(30*time.Second, nil, "exec", id, "/bin/fleetclient", "tcp", forbiddenAddr); got != "error EPERM" {
			t.Errorf("attached: forbidden listener: %q, want error EPERM", got)
		}
		// The image is unchanged: detach takes the bundle away again.
		if out, err := d.cli("detach", "ctr1"); err != nil {
			t.Fatalf("detach: %v\n%s", err, out)
		}
		host, _ := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
		inCtr, _ := eng.docker(30*time.Second, nil, "exec", id, "/bin/busybox", "cat", "/etc/ssl/certs/ca-certificates.crt")
		if strings.TrimSpace(inCtr) != strings.TrimSpace(string(host)) {
			t.Errorf("after detach the container's trust file is not the image's own (%d bytes, want %d)", len(inCtr), len(host))
		}
		if got, _ := eng.docker(30*time.Second, nil, "exec", id, "/bin/fleetclient", "tcp", apiAddr); got != "error EPERM" {
			t.Errorf("detached: fenced again: %q, want error EPERM", got)
		}
		_, _ = eng.docker(30*time.Second, nil, "rm", "-f", id)
	})

	t.Run("docker rm -f detaches the sandbox", func(t *testing.T) {
		id := eng.run(t, "sluice-fleet:test", "/bin/busybox", "sleep", "300")
		if out, err := d.cli("attach", "--policy", pol, "--container", id, "--runtime", "docker", "--docker-socket", eng.socket, "--name", "ctr2"); err != nil {
			t.Fatalf("attach --container: %v\n%s", err, out)
		}
		cgid := listedCgroupID(t, d, "ctr2")
		links := filepath.Join(w.pin, "links", strconv.FormatUint(cgid, 10))
		if _, err := os.Stat(links); err != nil {
			t.Fatalf("no pinned links: %v", err)
		}
		if _, err := eng.docker(time.Minute, nil, "rm", "-f", id); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		waitFor(t, "ctr2 to leave sluice list", 10*time.Second, func() bool { return listedCgroupID(t, d, "ctr2") == 0 })
		t.Logf("detached %v after docker rm -f", time.Since(start).Round(time.Millisecond))
		if _, err := os.Stat(links); !os.IsNotExist(err) {
			t.Errorf("pinned links still present: %v", err)
		}
		if _, err := os.Stat(filepath.Join(d.state, "sandboxes", "ctr2.json")); !os.IsNotExist(err) {
			t.Errorf("state record still present: %v", err)
		}
		waitFor(t, "the cgroup_gone audit event", 5*time.Second, func() bool { return hasGoneEvent(readAudit(t, auditPath), "ctr2") })
	})

	t.Run("daemon killed and restarted: fenced throughout", func(t *testing.T) {
		// The loop runs until the test touches /tmp/stop (after the
		// restart), so that it covers before, during and after.
		id := eng.run(t, "sluice-fleet:test", "/bin/fleetclient", "loop", forbiddenAddr, "120s", "/tmp/stop")
		// The loop has begun once the kernel counts its refusals.
		waitFor(t, "the container's first refusals", 10*time.Second, func() bool { return fencedRefusals(t, w, d, forbidden) > 0 })
		d.kill9()
		before := fencedRefusals(t, w, d, forbidden)
		waitFor(t, "refusals while the daemon is down", 10*time.Second, func() bool { return fencedRefusals(t, w, d, forbidden) > before })
		d.start()
		after := fencedRefusals(t, w, d, forbidden)
		waitFor(t, "refusals after the restart", 10*time.Second, func() bool { return fencedRefusals(t, w, d, forbidden) > after })
		if out, err := eng.docker(30*time.Second, nil, "exec", id, "/bin/busybox", "touch", "/tmp/stop"); err != nil {
			t.Fatalf("stopping the loop: %v\n%s", err, out)
		}
		out := eng.logs(t, id, "loop ")
		line := lineWith(out, "loop ")
		if !strings.Contains(line, " ok=0 ") || !strings.Contains(line, " other=0") || strings.Contains(line, "eperm=0 ") {
			t.Fatalf("fenced container across a daemon restart: %q, want only EPERM", line)
		}
	})

	if n := hits.Load(); n != 0 {
		t.Fatalf("the forbidden listener received %d connections", n)
	}
	var gone int
	for _, ev := range readAudit(t, auditPath) {
		if ev.Kind == audit.KindSandbox && ev.Decision == "cgroup_gone" {
			gone++
		}
	}
	if gone == 0 {
		t.Errorf("no cgroup_gone event in the audit log")
	}
}

// containerPID is the host pid of a container's init process.
func containerPID(t *testing.T, e *dockerEngine, id string) int {
	t.Helper()
	out, err := e.docker(30*time.Second, nil, "inspect", "-f", "{{.State.Pid}}", id)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(out)
	if err != nil || pid <= 0 {
		t.Fatalf("container %s pid %q", id, out)
	}
	return pid
}

// listedCgroupID is the cgroup id sluice list shows for a sandbox, 0 when
// it is not listed.
func listedCgroupID(t *testing.T, d *daemonProc, name string) uint64 {
	t.Helper()
	out, err := d.cli("list", "--json")
	if err != nil {
		return 0
	}
	var infos []api.Info
	if json.Unmarshal([]byte(out), &infos) != nil {
		return 0
	}
	for _, i := range infos {
		if i.Name == name {
			return i.CgroupID
		}
	}
	return 0
}

// fencedRefusals counts the kernel's refusals of port under the fenced
// pseudo-sandbox (read from the pinned maps: works with the daemon down).
func fencedRefusals(t *testing.T, w *world, d *daemonProc, port int) uint64 {
	t.Helper()
	out, err := exec.Command(sluiceBin(t), "blocked", "fenced", "--json", "--pin-dir", w.pin, "--state-dir", d.state).Output()
	if err != nil {
		return 0
	}
	var rows []blocked.Row
	_ = json.Unmarshal(out, &rows)
	var n uint64
	for _, r := range rows {
		if r.Port == uint16(port) {
			n += r.Count
		}
	}
	return n
}
