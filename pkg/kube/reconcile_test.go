package kube

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files")

const eventsFile = "../../testdata/kubernetes/pod-events.jsonl"

func readEvents(t *testing.T, path string) []Event {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var evs []Event
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var ev Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
	}
	return evs
}

// TestReplayRecordedEvents feeds the recorded watch stream through the
// reconciler and compares every action with the golden file.
func TestReplayRecordedEvents(t *testing.T) {
	r := NewReconciler("node-a")
	type step struct {
		Event   int      `json:"event"`
		Type    string   `json:"type"`
		Pod     string   `json:"pod"`
		Actions []Action `json:"actions"`
	}
	var got []step
	for i, ev := range readEvents(t, eventsFile) {
		acts := r.Handle(ev)
		if len(acts) == 0 {
			continue
		}
		got = append(got, step{Event: i + 1, Type: ev.Type, Pod: ev.Object.Metadata.Namespace + "/" + ev.Object.Metadata.Name, Actions: acts})
	}
	out, err := json.MarshalIndent(got, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	out = append(out, '\n')
	golden := "../../testdata/kubernetes/pod-events.actions.json"
	if *update {
		if err := os.WriteFile(golden, out, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(out, want) {
		t.Fatalf("actions differ from %s (-update rewrites it):\n%s", golden, out)
	}
	if left := r.Attached(); len(left) != 0 {
		t.Fatalf("sandboxes still attached after every pod went away: %v", left)
	}
}

// TestReplayInvariants checks properties of the recorded stream that do
// not depend on the golden file.
func TestReplayInvariants(t *testing.T) {
	r := NewReconciler("node-a")
	attached := map[string]string{} // sandbox -> policy
	for i, ev := range readEvents(t, eventsFile) {
		for _, a := range r.Handle(ev) {
			switch a.Op {
			case OpAttach:
				if a.ContainerID == "" || !strings.HasPrefix(a.ContainerID, "containerd://") {
					t.Errorf("event %d: attach without a container: %+v", i+1, a)
				}
				if ev.Object.Spec.NodeName != "node-a" {
					t.Errorf("event %d: attached a pod of node %s", i+1, ev.Object.Spec.NodeName)
				}
				attached[a.Sandbox] = a.Policy
			case OpDetach:
				if _, ok := attached[a.Sandbox]; !ok {
					t.Errorf("event %d: detach of %s that was never attached", i+1, a.Sandbox)
				}
				delete(attached, a.Sandbox)
			}
		}
	}
	if len(attached) != 0 {
		t.Fatalf("left attached: %v", attached)
	}
}

func pod(uid, ns, name, node, policy, phase string, running bool) Pod {
	var p Pod
	p.Metadata.UID, p.Metadata.Namespace, p.Metadata.Name = uid, ns, name
	if policy != "" {
		p.Metadata.Annotations = map[string]string{AnnotationPolicy: policy}
	}
	p.Spec.NodeName, p.Status.Phase = node, phase
	cs := ContainerStatus{Name: "main", ContainerID: "containerd://" + strings.Repeat(uid[:1], 64)}
	if running {
		cs.State.Running = &struct{}{}
	} else {
		cs.State.Waiting = &struct{}{}
	}
	p.Status.ContainerStatuses = []ContainerStatus{cs}
	return p
}

func TestHandleCases(t *testing.T) {
	tests := []struct {
		name   string
		before []Event
		ev     Event
		want   string // "op sandbox policy" joined by "; "
	}{
		{name: "pending pod waits", ev: Event{"ADDED", pod("1", "ns", "p", "n", "agent", "Pending", false)}, want: ""},
		{name: "running pod attaches", ev: Event{"ADDED", pod("1", "ns", "p", "n", "agent", "Running", true)}, want: "attach k8s.ns.p agent"},
		{name: "repeat is a no-op", before: []Event{{"ADDED", pod("1", "ns", "p", "n", "agent", "Running", true)}},
			ev: Event{"MODIFIED", pod("1", "ns", "p", "n", "agent", "Running", true)}, want: ""},
		{name: "policy change re-attaches", before: []Event{{"ADDED", pod("1", "ns", "p", "n", "agent", "Running", true)}},
			ev: Event{"MODIFIED", pod("1", "ns", "p", "n", "strict", "Running", true)}, want: "attach k8s.ns.p strict"},
		{name: "other node ignored", ev: Event{"ADDED", pod("1", "ns", "p", "other", "agent", "Running", true)}, want: ""},
		{name: "no annotation ignored", ev: Event{"ADDED", pod("1", "ns", "p", "n", "", "Running", true)}, want: ""},
		{name: "failed pod detaches", before: []Event{{"ADDED", pod("1", "ns", "p", "n", "agent", "Running", true)}},
			ev: Event{"MODIFIED", pod("1", "ns", "p", "n", "agent", "Failed", false)}, want: "detach k8s.ns.p "},
		{name: "delete of unknown pod", ev: Event{"DELETED", pod("1", "ns", "p", "n", "agent", "Running", true)}, want: ""},
		{name: "error event ignored", ev: Event{Type: "ERROR"}, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewReconciler("n")
			for _, ev := range tt.before {
				r.Handle(ev)
			}
			var parts []string
			for _, a := range r.Handle(tt.ev) {
				parts = append(parts, string(a.Op)+" "+a.Sandbox+" "+a.Policy)
			}
			if got := strings.Join(parts, "; "); got != tt.want {
				t.Fatalf("actions %q, want %q", got, tt.want)
			}
		})
	}
}

func TestFailedRetries(t *testing.T) {
	r := NewReconciler("n")
	p := pod("1", "ns", "p", "n", "agent", "Running", true)
	acts := r.Handle(Event{"ADDED", p})
	if len(acts) != 1 {
		t.Fatal(acts)
	}
	if again := r.Handle(Event{"MODIFIED", p}); len(again) != 0 {
		t.Fatalf("no retry expected before Failed: %v", again)
	}
	r.Failed(acts[0])
	if again := r.Handle(Event{"MODIFIED", p}); len(again) != 1 || again[0].Op != OpAttach {
		t.Fatalf("retry after Failed: %v", again)
	}
}

func TestSync(t *testing.T) {
	f, err := os.Open("../../testdata/kubernetes/pod-list.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var list struct{ Items []Pod }
	if err := json.NewDecoder(f).Decode(&list); err != nil {
		t.Fatal(err)
	}
	r := NewReconciler("node-a")
	// Before the restart, a pod that has since vanished was attached.
	r.Handle(Event{"ADDED", pod("9", "old", "gone", "node-a", "agent", "Running", true)})
	daemon := []string{"k8s.old.gone", "k8s.stale.pod", "manual-sandbox", "k8s.sandboxes.agent-7f9c"}
	var got []string
	for _, a := range r.Sync(list.Items, daemon) {
		got = append(got, string(a.Op)+" "+a.Sandbox)
	}
	want := []string{"detach k8s.old.gone", "attach k8s.sandboxes.agent-7f9c", "detach k8s.stale.pod"}
	if strings.Join(got, ", ") != strings.Join(want, ", ") {
		t.Fatalf("sync actions %v, want %v", got, want)
	}
}

func TestSandboxForAnnotation(t *testing.T) {
	p := pod("1", "ns", "p", "n", "agent", "Running", true)
	p.Metadata.Annotations[AnnotationName] = "my box"
	if got := SandboxFor(&p); got != "k8s.my-box" {
		t.Fatalf("SandboxFor = %q", got)
	}
}
