package main

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/sluice-dev/sluice/pkg/api"
	"github.com/sluice-dev/sluice/pkg/containers"
)

// recordingDaemon is a fake daemon control socket that records requests.
type recordingDaemon struct {
	socket string
	mu     sync.Mutex
	reqs   []string // "METHOD PATH"
	bodies []api.AttachRequest
	fail   string
}

func newRecordingDaemon(t *testing.T) *recordingDaemon {
	t.Helper()
	dir, err := os.MkdirTemp("", "sluice-fake-daemon-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &recordingDaemon{socket: filepath.Join(dir, "sluice.sock")}
	ln, err := net.Listen("unix", d.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.reqs = append(d.reqs, r.Method+" "+r.URL.Path)
		w.Header().Set("Content-Type", "application/json")
		if d.fail != "" {
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(map[string]string{"error": d.fail})
			return
		}
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/v1/sandboxes":
			data, _ := io.ReadAll(r.Body)
			var req api.AttachRequest
			dec := json.NewDecoder(strings.NewReader(string(data)))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&req); err != nil {
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			d.bodies = append(d.bodies, req)
			json.NewEncoder(w).Encode(api.Info{Name: req.Name, Cgroup: "/sys/fs/cgroup/x"})
		case r.Method == http.MethodDelete:
			json.NewEncoder(w).Encode(map[string]string{"detached": r.PathValue("name")})
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return d
}

func ociState(id, status string, pid int, ann map[string]string) string {
	data, _ := json.Marshal(containers.OCIState{OCIVersion: "1.2.0", ID: id, Status: status, PID: pid, Bundle: "/run/bundle/" + id, Annotations: ann})
	return string(data)
}

// TestOCIHookRequests runs the hook command against a fake daemon socket
// and checks the control API requests it makes.
func TestOCIHookRequests(t *testing.T) {
	dir := t.TempDir()
	pol := "version: 1\nrules:\n  - name: a\n    hosts: [allowed.test]\n"
	if err := os.WriteFile(filepath.Join(dir, "agent.yaml"), []byte(pol), 0o644); err != nil {
		t.Fatal(err)
	}
	const id = "3e9f0c2d7b1a4e6f8a0b2c4d6e8f0a1b3c5d7e9f1a2b4c6d8e0f2a4b6c8d0e2f"
	tests := []struct {
		name     string
		state    string
		fail     string
		wantReq  string
		wantBody *api.AttachRequest
		wantOut  string
		wantErr  string
	}{
		{name: "createRuntime attaches", state: ociState(id, "created", 4242, map[string]string{"sluice.dev/policy": "agent", "sluice.dev/name": "agent-42"}),
			wantReq: "POST /v1/sandboxes", wantBody: &api.AttachRequest{Name: "agent-42", PID: 4242, PolicyFile: filepath.Join(dir, "agent.yaml"), Policy: pol},
			wantOut: "attached agent-42"},
		{name: "default name", state: ociState(id, "creating", 7, map[string]string{"sluice.dev/policy": "agent"}),
			wantReq: "POST /v1/sandboxes", wantBody: &api.AttachRequest{Name: "oci-" + id[:32], PID: 7, PolicyFile: filepath.Join(dir, "agent.yaml"), Policy: pol}},
		{name: "annotations become labels", state: ociState(id, "created", 9, map[string]string{"sluice.dev/policy": "agent", "sluice.dev/name": "agent-9",
			"io.kubernetes.pod.name": "alice-agent", "sluice.dev/user": "alice", "bad key": "x", "long": strings.Repeat("v", 2000)}),
			wantReq: "POST /v1/sandboxes", wantBody: &api.AttachRequest{Name: "agent-9", PID: 9, PolicyFile: filepath.Join(dir, "agent.yaml"), Policy: pol,
				Labels: map[string]string{"io.kubernetes.pod.name": "alice-agent", "sluice.dev/user": "alice"}}},
		{name: "poststop detaches", state: ociState(id, "stopped", 0, map[string]string{"sluice.dev/policy": "agent", "sluice.dev/name": "agent-42"}),
			wantReq: "DELETE /v1/sandboxes/agent-42", wantOut: "detached agent-42"},
		{name: "no annotation: nothing", state: ociState(id, "created", 7, nil)},
		{name: "daemon refuses: hook fails", state: ociState(id, "created", 7, map[string]string{"sluice.dev/policy": "agent"}),
			fail: "cgroup is already attached", wantReq: "POST /v1/sandboxes", wantErr: "attaching container " + id + ": cgroup is already attached"},
		{name: "unknown policy: no request", state: ociState(id, "created", 7, map[string]string{"sluice.dev/policy": "nope"}),
			wantErr: `no policy named "nope"`},
		{name: "malformed state", state: "{", wantErr: "reading the OCI state"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newRecordingDaemon(t)
			d.fail = tt.fail
			out, errOut, code := opsCLI(t, tt.state, "oci-hook", "--socket", d.socket, "--policy-dir", dir)
			if tt.wantErr != "" {
				if code == 0 || !strings.Contains(errOut, tt.wantErr) {
					t.Fatalf("exit %d, stderr %q, want %q", code, errOut, tt.wantErr)
				}
			} else if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			d.mu.Lock()
			defer d.mu.Unlock()
			if tt.wantReq == "" {
				if len(d.reqs) != 0 {
					t.Fatalf("unexpected requests %v", d.reqs)
				}
				return
			}
			if len(d.reqs) != 1 || d.reqs[0] != tt.wantReq {
				t.Fatalf("requests %v, want %q", d.reqs, tt.wantReq)
			}
			if tt.wantBody != nil && (len(d.bodies) != 1 || !reflect.DeepEqual(d.bodies[0], *tt.wantBody)) {
				t.Fatalf("attach body %+v, want %+v", d.bodies, *tt.wantBody)
			}
			if !strings.Contains(out, tt.wantOut) {
				t.Fatalf("stdout %q, want %q", out, tt.wantOut)
			}
		})
	}
}
