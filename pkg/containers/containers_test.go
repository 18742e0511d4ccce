package containers

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/cgroup"
	"github.com/sluice-dev/sluice/pkg/testutil"
)

// liveProcess starts a sleeping child and returns its pid.
func liveProcess(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd.Process.Pid
}

// zombieProcess returns the pid of a child that has exited but is not reaped.
func zombieProcess(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Wait() })
	pid := cmd.Process.Pid
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		data, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if i := strings.LastIndexByte(string(data), ')'); i > 0 && i+2 < len(data) && data[i+2] == 'Z' {
			return pid
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("child did not become a zombie")
	return 0
}

// fakeDocker serves a minimal Docker Engine API on a Unix socket in a temp
// dir: GET /containers/{id}/json for the given containers (by full id,
// unique prefix or name, like the engine).
func fakeDocker(t *testing.T, containers map[string]dockerInspect) (socket string, requests *[]string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "sluice-docker-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket = filepath.Join(dir, "docker.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	var reqs []string
	mux := http.NewServeMux()
	mux.HandleFunc("GET /containers/{id}/json", func(w http.ResponseWriter, r *http.Request) {
		reqs = append(reqs, r.URL.Path)
		q := r.PathValue("id")
		var found []dockerInspect
		for id, c := range containers {
			if id == q || strings.HasPrefix(id, q) || strings.TrimPrefix(c.Name, "/") == q {
				found = append(found, c)
			}
		}
		w.Header().Set("Content-Type", "application/json")
		switch len(found) {
		case 0:
			w.WriteHeader(http.StatusNotFound)
			json.NewEncoder(w).Encode(map[string]string{"message": "No such container: " + q})
		case 1:
			json.NewEncoder(w).Encode(found[0])
		default:
			w.WriteHeader(http.StatusNotFound)
			json.NewEncoder(w).Encode(map[string]string{"message": "Multiple IDs found with provided prefix: " + q})
		}
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return socket, &reqs
}

func inspect(id, name, status string, pid int) dockerInspect {
	var c dockerInspect
	c.ID, c.Name = id, "/"+name
	c.State.Status, c.State.Running, c.State.Pid = status, status == "running", pid
	return c
}

func TestDockerResolve(t *testing.T) {
	pid := liveProcess(t)
	zombie := zombieProcess(t)
	wantCg, err := cgroup.OfPID(pid)
	if err != nil {
		testutil.KernelLacks(t, "no cgroup v2: %v", err)
	}
	const idA = "4f1c2a9be0d3aa11bb22cc33dd44ee55ff66aa77bb88cc99dd00ee11ff22aa33"
	const idB = "4f1c77777777aa11bb22cc33dd44ee55ff66aa77bb88cc99dd00ee11ff22aa33"
	sock, reqs := fakeDocker(t, map[string]dockerInspect{
		idA:                   inspect(idA, "agent-1", "running", pid),
		idB:                   inspect(idB, "stopped-one", "exited", 0),
		"9999zombie000000000": inspect("9999zombie000000000", "gone", "running", zombie),
	})
	d := NewDocker(sock)
	tests := []struct {
		name    string
		id      string
		wantID  string
		wantErr string
	}{
		{name: "full id", id: idA, wantID: idA},
		{name: "unique prefix", id: "4f1c2a", wantID: idA},
		{name: "by name", id: "agent-1", wantID: idA},
		{name: "ambiguous prefix", id: "4f1c", wantErr: "Multiple IDs"},
		{name: "unknown", id: "nope", wantErr: "No such container: nope"},
		{name: "not running", id: "stopped-one", wantErr: "is exited, not running"},
		{name: "exited process", id: "gone", wantErr: "has exited"},
		{name: "slash", id: "../../info", wantErr: "invalid container id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := d.Resolve(context.Background(), tt.id)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := Target{Runtime: RuntimeDocker, ID: tt.wantID, Name: "agent-1", PID: pid, Cgroup: wantCg,
				Netns: "/proc/" + strconv.Itoa(pid) + "/ns/net"}
			if got != want {
				t.Fatalf("got %+v\nwant %+v", got, want)
			}
		})
	}
	if len(*reqs) == 0 || (*reqs)[0] != "/containers/"+idA+"/json" {
		t.Fatalf("engine requests = %v", *reqs)
	}
}

func TestDockerUnreachable(t *testing.T) {
	d := NewDocker(filepath.Join(t.TempDir(), "missing.sock"))
	_, err := d.Resolve(context.Background(), "abc")
	if err == nil || !strings.Contains(err.Error(), "cannot reach the Docker engine") {
		t.Fatalf("err = %v", err)
	}
}

// fakeContainerdState lays out STATE/NS/ID/init.pid like containerd's
// runtime v2 shim.
func fakeContainerdState(t *testing.T, tasks map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for nsID, pid := range tasks {
		dir := filepath.Join(root, nsID)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if pid == "" {
			continue // a task whose shim has not written init.pid yet
		}
		if err := os.WriteFile(filepath.Join(dir, "init.pid"), []byte(pid), 0o644); err != nil {
			t.Fatal(err)
		}
		// The shim also keeps the bundle's config.json there.
		if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"ociVersion":"1.2.0"}`), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestContainerdResolve(t *testing.T) {
	pid := liveProcess(t)
	zombie := zombieProcess(t)
	wantCg, err := cgroup.OfPID(pid)
	if err != nil {
		testutil.KernelLacks(t, "no cgroup v2: %v", err)
	}
	const idK8s = "8d3b1c0f6a2e4b5c9d7e1f0a3b2c4d6e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c"
	state := fakeContainerdState(t, map[string]string{
		"k8s.io/" + idK8s:        strconv.Itoa(pid) + "\n",
		"k8s.io/abcd0001":        strconv.Itoa(pid),
		"default/abcd0002":       strconv.Itoa(pid),
		"moby/dead0000":          strconv.Itoa(zombie),
		"default/starting0":      "",
		"default/garbage0":       "not-a-pid",
		"default/samename":       strconv.Itoa(pid),
		"k8s.io/samename":        strconv.Itoa(pid),
		"default/zeropid0000000": "0",
	})
	tests := []struct {
		name    string
		ns      string
		id      string
		wantNS  string
		wantID  string
		wantErr string
	}{
		{name: "full id in k8s.io", id: idK8s, wantNS: "k8s.io", wantID: idK8s},
		{name: "unique prefix", id: "8d3b1c0f", wantNS: "k8s.io", wantID: idK8s},
		{name: "ambiguous prefix across namespaces", id: "abcd", wantErr: `"abcd" is ambiguous: default/abcd0002, k8s.io/abcd0001`},
		{name: "exact name in two namespaces", id: "samename", wantErr: "ambiguous"},
		{name: "namespace narrows", ns: "k8s.io", id: "samename", wantNS: "k8s.io", wantID: "samename"},
		{name: "short prefix is not a prefix", id: "8d3", wantErr: "no task"},
		{name: "unknown", id: "ffff0000", wantErr: `no task "ffff0000" in any namespace`},
		{name: "unknown in namespace", ns: "moby", id: idK8s, wantErr: "in namespace moby"},
		{name: "no init.pid yet", id: "starting0", wantErr: "has no init process yet"},
		{name: "garbage pid file", id: "garbage0", wantErr: "does not hold a pid"},
		{name: "zero pid", id: "zeropid0000000", wantErr: "no running process"},
		{name: "exited process", id: "dead0000", wantErr: "has exited"},
		{name: "path traversal", id: "../k8s.io", wantErr: "invalid container id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Containerd{StateDir: state, Namespace: tt.ns}
			got, err := c.Resolve(context.Background(), tt.id)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := Target{Runtime: RuntimeContainerd, ID: tt.wantID, Namespace: tt.wantNS, PID: pid, Cgroup: wantCg,
				Netns: "/proc/" + strconv.Itoa(pid) + "/ns/net"}
			if got != want {
				t.Fatalf("got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestContainerdMissingState(t *testing.T) {
	c := &Containerd{StateDir: filepath.Join(t.TempDir(), "nope")}
	_, err := c.Resolve(context.Background(), "abcd")
	if err == nil || !strings.Contains(err.Error(), "reading task state") {
		t.Fatalf("err = %v", err)
	}
}

func TestNewPicksRuntime(t *testing.T) {
	dir := t.TempDir()
	sock, _ := fakeDocker(t, nil)
	state := fakeContainerdState(t, map[string]string{"default/x": "1"})
	tests := []struct {
		name    string
		runtime string
		o       Options
		want    string
		wantErr string
	}{
		{name: "docker", runtime: "docker", want: "*containers.Docker"},
		{name: "containerd", runtime: "containerd", want: "*containers.Containerd"},
		{name: "auto finds docker", o: Options{DockerSocket: sock, ContainerdState: state}, want: "*containers.Docker"},
		{name: "auto falls back to containerd", o: Options{DockerSocket: filepath.Join(dir, "no.sock"), ContainerdState: state}, want: "*containers.Containerd"},
		{name: "auto finds nothing", o: Options{DockerSocket: filepath.Join(dir, "no.sock"), ContainerdState: filepath.Join(dir, "none"), CRIORunRoot: filepath.Join(dir, "none")}, wantErr: "no container runtime found"},
		{name: "unknown", runtime: "rkt", wantErr: "expect 'docker', 'containerd' or 'cri-o'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := New(tt.runtime, tt.o)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := typeName(r); got != tt.want {
				t.Fatalf("resolver %s, want %s", got, tt.want)
			}
		})
	}
}

func typeName(v any) string {
	switch v.(type) {
	case *Docker:
		return "*containers.Docker"
	case *Containerd:
		return "*containers.Containerd"
	}
	return "?"
}

func TestSplitContainerID(t *testing.T) {
	for in, want := range map[string][2]string{
		"containerd://abc": {"containerd", "abc"},
		"docker://abc":     {"docker", "abc"},
		"abc":              {"", "abc"},
	} {
		rt, id := SplitContainerID(in)
		if rt != want[0] || id != want[1] {
			t.Errorf("SplitContainerID(%q) = %q, %q", in, rt, id)
		}
	}
}

func TestSandboxName(t *testing.T) {
	long := strings.Repeat("a", 80)
	tests := []struct{ name, in, want string }{
		{"plain", "agent-1", "agent-1"},
		{"bad chars", "a/b c:d", "a-b-c-d"},
		{"empty", "", "sandbox"},
		{"dots trimmed", ".x.", "x"},
	}
	for _, tt := range tests {
		if got := SandboxName(tt.in); got != tt.want {
			t.Errorf("%s: SandboxName(%q) = %q, want %q", tt.name, tt.in, got, tt.want)
		}
	}
	a, b := SandboxName("k8s", "default", long+"1"), SandboxName("k8s", "default", long+"2")
	if len(a) > 63 || len(b) > 63 || a == b {
		t.Fatalf("long names: %q (%d) %q (%d)", a, len(a), b, len(b))
	}
}
