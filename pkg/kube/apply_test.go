package kube

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-dev/sluice/pkg/containers"
)

type fakeDaemon struct {
	calls []string
	err   error
}

func (d *fakeDaemon) Attach(_ context.Context, name, cg, file string, policy []byte, _ map[string]string) error {
	d.calls = append(d.calls, fmt.Sprintf("attach %s %s %s %d", name, cg, filepath.Base(file), len(policy)))
	return d.err
}
func (d *fakeDaemon) Detach(_ context.Context, name string) error {
	d.calls = append(d.calls, "detach "+name)
	return d.err
}
func (d *fakeDaemon) List(context.Context) ([]string, error) { return nil, d.err }

type fakeResolver map[string]containers.Target

func (f fakeResolver) Resolve(_ context.Context, id string) (containers.Target, error) {
	t, ok := f[id]
	if !ok {
		return t, errors.New("no such container " + id)
	}
	return t, nil
}

func TestApply(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "agent.yaml"), []byte("version: 1\nrules: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	const uid = "aaaaaaaa-1111-4111-8111-aaaaaaaaaaaa"
	res := fakeResolver{
		"c1": {PID: 10, Cgroup: "/sys/fs/cgroup/kubepods/besteffort/pod" + uid + "/c1"},
		"c2": {PID: 11, Cgroup: "/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + strings.ReplaceAll(uid, "-", "_") + ".slice/cri-containerd-c2.scope"},
		"c3": {PID: 12, Cgroup: "/sys/fs/cgroup/system.slice/docker-c3.scope"},
	}
	tests := []struct {
		name    string
		act     Action
		want    string
		wantErr string
	}{
		{name: "cgroupfs driver", act: Action{Op: OpAttach, Sandbox: "k8s.a.b", UID: uid, Policy: "agent", ContainerID: "containerd://c1"},
			want: "attach k8s.a.b /sys/fs/cgroup/kubepods/besteffort/pod" + uid + " agent.yaml 21"},
		{name: "systemd driver", act: Action{Op: OpAttach, Sandbox: "k8s.a.b", UID: uid, Policy: "agent", ContainerID: "containerd://c2"},
			want: "attach k8s.a.b /sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + strings.ReplaceAll(uid, "-", "_") + ".slice agent.yaml 21"},
		{name: "parent is not the pod cgroup", act: Action{Op: OpAttach, Sandbox: "k8s.a.b", UID: uid, Policy: "agent", ContainerID: "containerd://c3"},
			wantErr: "is not the cgroup of pod"},
		{name: "unknown policy", act: Action{Op: OpAttach, Sandbox: "k8s.a.b", UID: uid, Policy: "nope", ContainerID: "containerd://c1"},
			wantErr: `no policy named "nope"`},
		{name: "path policy refused", act: Action{Op: OpAttach, Sandbox: "k8s.a.b", UID: uid, Policy: "/etc/passwd", ContainerID: "containerd://c1"},
			wantErr: "outside the policy directories"},
		{name: "unsupported runtime", act: Action{Op: OpAttach, Sandbox: "k8s.a.b", UID: uid, Policy: "agent", ContainerID: "cri-o://c1"},
			wantErr: `runtime "cri-o" is not supported`},
		{name: "container gone", act: Action{Op: OpAttach, Sandbox: "k8s.a.b", UID: uid, Policy: "agent", ContainerID: "containerd://c9"},
			wantErr: "no such container c9"},
		{name: "detach", act: Action{Op: OpDetach, Sandbox: "k8s.a.b"}, want: "detach k8s.a.b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &fakeDaemon{}
			ap := &Applier{Daemon: d, Resolvers: map[string]containers.Resolver{"containerd": res}, PolicyDirs: []string{dir}}
			err := ap.Apply(context.Background(), tt.act)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				if len(d.calls) != 0 {
					t.Fatalf("daemon called after an error: %v", d.calls)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(d.calls) != 1 || d.calls[0] != tt.want {
				t.Fatalf("calls %v, want %q", d.calls, tt.want)
			}
		})
	}
}
