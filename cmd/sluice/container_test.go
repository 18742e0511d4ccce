package main

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

	"github.com/sluice-dev/sluice/pkg/cgroup"
	"github.com/sluice-dev/sluice/pkg/containers"
	"github.com/sluice-dev/sluice/pkg/testutil"
	"github.com/spf13/cobra"
)

// fakeDockerSocket serves GET /containers/{id}/json for one running
// container on a Unix socket.
func fakeDockerSocket(t *testing.T, id, name string, pid int) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sluice-docker-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "docker.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/containers/"+id+"/json" && r.URL.Path != "/containers/"+name+"/json" {
			w.WriteHeader(http.StatusNotFound)
			json.NewEncoder(w).Encode(map[string]string{"message": "No such container: " + strings.Split(r.URL.Path, "/")[2]})
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"Id": id, "Name": "/" + name,
			"State": map[string]any{"Status": "running", "Running": true, "Pid": pid}})
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func sleeper(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd.Process.Pid
}

func TestContainerResolveCommand(t *testing.T) {
	pid := sleeper(t)
	cg, err := cgroup.OfPID(pid)
	if err != nil {
		testutil.KernelLacks(t, "no cgroup v2: %v", err)
	}
	const id = "4f1c2a9be0d3aa11bb22cc33dd44ee55ff66aa77bb88cc99dd00ee11ff22aa33"
	sock := fakeDockerSocket(t, id, "agent-1", pid)
	state := t.TempDir()
	os.MkdirAll(filepath.Join(state, "k8s.io", id), 0o755)
	os.WriteFile(filepath.Join(state, "k8s.io", id, "init.pid"), []byte(strconv.Itoa(pid)), 0o644)

	tests := []struct {
		name    string
		args    []string
		want    containers.Target
		wantErr string
	}{
		{name: "docker by name", args: []string{"--runtime", "docker", "--docker-socket", sock, "agent-1"},
			want: containers.Target{Runtime: "docker", ID: id, Name: "agent-1", PID: pid, Cgroup: cg, Netns: "/proc/" + strconv.Itoa(pid) + "/ns/net"}},
		{name: "containerd by prefix", args: []string{"--runtime", "containerd", "--containerd-state", state, id[:12]},
			want: containers.Target{Runtime: "containerd", ID: id, Namespace: "k8s.io", PID: pid, Cgroup: cg, Netns: "/proc/" + strconv.Itoa(pid) + "/ns/net"}},
		{name: "auto picks containerd when docker is absent", args: []string{"--docker-socket", filepath.Join(state, "none.sock"), "--containerd-state", state, id},
			want: containers.Target{Runtime: "containerd", ID: id, Namespace: "k8s.io", PID: pid, Cgroup: cg, Netns: "/proc/" + strconv.Itoa(pid) + "/ns/net"}},
		{name: "docker unknown", args: []string{"--runtime", "docker", "--docker-socket", sock, "nope"}, wantErr: "No such container: nope"},
		{name: "bad runtime", args: []string{"--runtime", "lxc", "x"}, wantErr: "expect 'docker', 'containerd' or 'cri-o'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := opsCLI(t, "", append([]string{"container", "resolve", "--json"}, tt.args...)...)
			if tt.wantErr != "" {
				if code == 0 || !strings.Contains(errOut, tt.wantErr) {
					t.Fatalf("exit %d, stderr %q, want %q", code, errOut, tt.wantErr)
				}
				return
			}
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			var got containers.Target
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				t.Fatal(err, out)
			}
			if got != tt.want {
				t.Fatalf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// TestContainerFlagsForAttach covers the helper `sluice attach --container`
// uses: it resolves the container to its init pid and a default name.
func TestContainerFlagsForAttach(t *testing.T) {
	pid := sleeper(t)
	if _, err := cgroup.OfPID(pid); err != nil {
		testutil.KernelLacks(t, "no cgroup v2: %v", err)
	}
	const id = "77aa2a9be0d3aa11bb22cc33dd44ee55ff66aa77bb88cc99dd00ee11ff22aa33"
	sock := fakeDockerSocket(t, id, "web_1", pid)
	cmd := &cobra.Command{Use: "attach"}
	cf := addContainerFlags(cmd.Flags(), true)
	if err := cmd.Flags().Parse([]string{"--container", "web_1", "--runtime", "docker", "--docker-socket", sock}); err != nil {
		t.Fatal(err)
	}
	tgt, ok, err := cf.resolve(context.Background())
	if err != nil || !ok {
		t.Fatalf("resolve: ok=%v err=%v", ok, err)
	}
	if tgt.PID != pid || cf.sandboxName(tgt) != "web_1" {
		t.Fatalf("target %+v name %q", tgt, cf.sandboxName(tgt))
	}
	cf2 := addContainerFlags((&cobra.Command{Use: "attach"}).Flags(), true)
	if _, ok, err := cf2.resolve(context.Background()); ok || err != nil {
		t.Fatalf("without --container: ok=%v err=%v", ok, err)
	}
}
