package containers

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const agentPolicy = "version: 1\nrules:\n  - name: api\n    hosts: [api.example.test]\n"

func TestParseOCIState(t *testing.T) {
	f, err := os.Open("testdata/oci/create-runtime.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := ParseOCIState(f)
	if err != nil {
		t.Fatal(err)
	}
	if st.PID != 4242 || st.Status != "created" || st.Annotations[AnnotationName] != "agent-42" || st.OCIVersion != "1.2.0" {
		t.Fatalf("parsed %+v", st)
	}
	tests := []struct {
		name    string
		in      string
		wantErr string
	}{
		{name: "not json", in: "nope", wantErr: "reading the OCI state"},
		{name: "no id", in: `{"status":"created","pid":1}`, wantErr: "no container id"},
		{name: "bad status", in: `{"id":"x","status":"paused","pid":1}`, wantErr: `status "paused"`},
		{name: "created without pid", in: `{"id":"x","status":"created"}`, wantErr: "has no pid"},
		{name: "stopped without pid", in: `{"id":"x","status":"stopped"}`},
		{name: "creating", in: `{"id":"x","status":"creating","pid":7}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseOCIState(strings.NewReader(tt.in))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestPlanHook(t *testing.T) {
	dir := t.TempDir()
	other := t.TempDir()
	write := func(d, name, body string) string {
		p := filepath.Join(d, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	agent := write(dir, "agent.yaml", agentPolicy)
	write(dir, "plain", "version: 1\nrules: []\n")
	outside := write(other, "outside.yaml", agentPolicy)
	// A ConfigMap volume: KEY -> ..data/KEY symlinks.
	if err := os.MkdirAll(filepath.Join(dir, "..data"), 0o755); err != nil {
		t.Fatal(err)
	}
	write(filepath.Join(dir, "..data"), "cm-key.yaml", agentPolicy)
	if err := os.Symlink("..data/cm-key.yaml", filepath.Join(dir, "cm-key.yaml")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "adir.yaml"), 0o755); err != nil {
		t.Fatal(err)
	}
	write(dir, "huge.yaml", strings.Repeat("#", maxPolicySize+1))
	cfg := HookConfig{PolicyDirs: []string{filepath.Join(dir, "missing"), dir}}
	const id = "3e9f0c2d7b1a4e6f8a0b2c4d6e8f0a1b3c5d7e9f1a2b4c6d8e0f2a4b6c8d0e2f"
	st := func(status string, ann map[string]string) OCIState {
		return OCIState{OCIVersion: "1.2.0", ID: id, Status: status, PID: 4242, Bundle: "/b", Annotations: ann}
	}
	tests := []struct {
		name     string
		state    OCIState
		cfg      HookConfig
		want     HookPlan
		wantBody bool
		wantErr  string
	}{
		{name: "no annotation: leave alone", state: st("created", map[string]string{"x": "y"}), want: HookPlan{Op: HookNone}},
		{name: "name in policy dir", state: st("created", map[string]string{AnnotationPolicy: "agent", AnnotationName: "agent-42"}),
			want: HookPlan{Op: HookAttach, Name: "agent-42", PID: 4242, PolicyFile: agent}, wantBody: true},
		{name: "file name with extension", state: st("creating", map[string]string{AnnotationPolicy: "agent.yaml"}),
			want: HookPlan{Op: HookAttach, Name: "oci-" + id[:32], PID: 4242, PolicyFile: agent}, wantBody: true},
		{name: "name without extension", state: st("created", map[string]string{AnnotationPolicy: "plain"}),
			want: HookPlan{Op: HookAttach, Name: "oci-" + id[:32], PID: 4242, PolicyFile: filepath.Join(dir, "plain")}},
		{name: "configmap symlink", state: st("created", map[string]string{AnnotationPolicy: "cm-key"}),
			want: HookPlan{Op: HookAttach, Name: "oci-" + id[:32], PID: 4242, PolicyFile: filepath.Join(dir, "cm-key.yaml")}, wantBody: true},
		{name: "absolute path in policy dir", state: st("created", map[string]string{AnnotationPolicy: agent}),
			want: HookPlan{Op: HookAttach, Name: "oci-" + id[:32], PID: 4242, PolicyFile: agent}, wantBody: true},
		{name: "absolute path outside refused", state: st("created", map[string]string{AnnotationPolicy: outside}),
			wantErr: "outside the policy directories"},
		{name: "absolute path outside allowed", state: st("created", map[string]string{AnnotationPolicy: outside}),
			cfg:  HookConfig{PolicyDirs: []string{dir}, AllowPaths: true},
			want: HookPlan{Op: HookAttach, Name: "oci-" + id[:32], PID: 4242, PolicyFile: outside}, wantBody: true},
		{name: "traversal", state: st("created", map[string]string{AnnotationPolicy: "../etc/shadow"}), wantErr: "invalid policy name"},
		{name: "traversal in absolute path", state: st("created", map[string]string{AnnotationPolicy: dir + "/../" + filepath.Base(other) + "/outside.yaml"}),
			wantErr: "outside the policy directories"},
		{name: "unknown name", state: st("created", map[string]string{AnnotationPolicy: "nope"}), wantErr: `no policy named "nope"`},
		{name: "directory", state: st("created", map[string]string{AnnotationPolicy: filepath.Join(dir, "adir.yaml")}), wantErr: "not a regular file"},
		{name: "too large", state: st("created", map[string]string{AnnotationPolicy: "huge"}), wantErr: "larger than"},
		{name: "empty", state: st("created", map[string]string{AnnotationPolicy: " "}), wantErr: "empty policy reference"},
		{name: "bad sandbox name", state: st("created", map[string]string{AnnotationPolicy: "agent", AnnotationName: "a/b"}), wantErr: "invalid sandbox name"},
		{name: "stopped: detach", state: st("stopped", map[string]string{AnnotationPolicy: "agent", AnnotationName: "agent-42"}),
			want: HookPlan{Op: HookDetach, Name: "agent-42"}},
		{name: "stopped: detach even if the policy is gone", state: st("stopped", map[string]string{AnnotationPolicy: "removed"}),
			want: HookPlan{Op: HookDetach, Name: "oci-" + id[:32]}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := cfg
			if tt.cfg.PolicyDirs != nil {
				c = tt.cfg
			}
			got, err := PlanHook(tt.state, c)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			body := got.Policy
			got.Policy = nil
			if got.Op != tt.want.Op || got.Name != tt.want.Name || got.PID != tt.want.PID || got.PolicyFile != tt.want.PolicyFile {
				t.Fatalf("got %+v\nwant %+v", got, tt.want)
			}
			if tt.wantBody && string(body) != agentPolicy {
				t.Fatalf("policy body %q", body)
			}
		})
	}
}
