package kube

import (
	"reflect"
	"testing"
)

// TestPodLabels: a pod's labels and sluice.dev/* annotations become the
// sandbox's labels; a change re-attaches (which updates them live).
func TestPodLabels(t *testing.T) {
	r := NewReconciler("node-1")
	p := pod("u1", "ns", "agent", "node-1", "agent", "Running", true)
	p.Metadata.Labels = map[string]string{"app": "agent", "bad key": "x"}
	p.Metadata.Annotations["sluice.dev/user"] = "alice"
	p.Metadata.Annotations["other.example/x"] = "not a label"
	acts := r.Handle(Event{Type: "ADDED", Object: p})
	want := map[string]string{"app": "agent", "sluice.dev/user": "alice"}
	if len(acts) != 1 || acts[0].Op != OpAttach || !reflect.DeepEqual(acts[0].Labels, want) {
		t.Fatalf("actions %+v", acts)
	}
	if acts := r.Handle(Event{Type: "MODIFIED", Object: p}); len(acts) != 0 {
		t.Fatalf("unchanged pod: %+v", acts)
	}
	p.Metadata.Annotations["sluice.dev/user"] = "bob"
	acts = r.Handle(Event{Type: "MODIFIED", Object: p})
	if len(acts) != 1 || acts[0].Op != OpAttach || acts[0].Labels["sluice.dev/user"] != "bob" || acts[0].Reason != "labels changed" {
		t.Fatalf("labels changed: %+v", acts)
	}
}
