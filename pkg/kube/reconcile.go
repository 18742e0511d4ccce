package kube

import (
	"sort"
	"strings"

	"github.com/sluice-dev/sluice/pkg/containers"
)

// Annotation names.
const (
	AnnotationPolicy = containers.AnnotationPolicy // sluice.dev/policy: a policy name (ConfigMap key)
	AnnotationName   = containers.AnnotationName   // sluice.dev/name: overrides the sandbox name
)

// NamePrefix starts the name of every sandbox the pod watch manages; Sync
// only ever detaches sandboxes with this prefix.
const NamePrefix = "k8s."

// Pod is the part of a Kubernetes Pod object the watch reads.
type Pod struct {
	Metadata struct {
		Name              string            `json:"name"`
		Namespace         string            `json:"namespace"`
		UID               string            `json:"uid"`
		ResourceVersion   string            `json:"resourceVersion,omitempty"`
		Labels            map[string]string `json:"labels,omitempty"`
		Annotations       map[string]string `json:"annotations,omitempty"`
		DeletionTimestamp *string           `json:"deletionTimestamp,omitempty"`
	} `json:"metadata"`
	Spec struct {
		NodeName string `json:"nodeName"`
	} `json:"spec"`
	Status struct {
		Phase                 string            `json:"phase"`
		InitContainerStatuses []ContainerStatus `json:"initContainerStatuses,omitempty"`
		ContainerStatuses     []ContainerStatus `json:"containerStatuses,omitempty"`
	} `json:"status"`
}

// ContainerStatus is one entry of status.containerStatuses.
type ContainerStatus struct {
	Name        string `json:"name"`
	ContainerID string `json:"containerID,omitempty"` // "containerd://ID"
	State       struct {
		Running    *struct{} `json:"running,omitempty"`
		Terminated *struct{} `json:"terminated,omitempty"`
		Waiting    *struct{} `json:"waiting,omitempty"`
	} `json:"state"`
}

// Event is one watch event.
type Event struct {
	Type   string `json:"type"` // ADDED, MODIFIED, DELETED (BOOKMARK, ERROR are ignored)
	Object Pod    `json:"object"`
}

// Op is an action's kind.
type Op string

// Actions.
const (
	OpAttach Op = "attach"
	OpDetach Op = "detach"
)

// Action is what to do for a pod.
type Action struct {
	Op      Op     `json:"op"`
	Sandbox string `json:"sandbox"`
	// Pod is "namespace/name"; UID its uid.
	Pod string `json:"pod,omitempty"`
	UID string `json:"uid,omitempty"`
	// Policy is the policy name (a key of the policies ConfigMap).
	Policy string `json:"policy,omitempty"`
	// ContainerID is a running container of the pod ("containerd://ID");
	// its process's cgroup parent is the pod cgroup to attach.
	ContainerID string `json:"container_id,omitempty"`
	// Labels are the sandbox's labels (PodLabels).
	Labels map[string]string `json:"labels,omitempty"`
	// Reason says why, for logs.
	Reason string `json:"reason"`
}

type podState struct {
	sandbox string
	policy  string
	labels  string // labelsKey of the labels attached with
}

// Reconciler turns pod events on one node into actions. The zero value is
// not usable: use NewReconciler.
type Reconciler struct {
	node     string
	attached map[string]podState // by pod uid
}

// NewReconciler returns a reconciler for the pods of node.
func NewReconciler(node string) *Reconciler {
	return &Reconciler{node: node, attached: map[string]podState{}}
}

// SandboxFor returns the sandbox name of a pod: its sluice.dev/name
// annotation, or "k8s.NAMESPACE.NAME" (cut to 63 characters with a hash).
func SandboxFor(p *Pod) string {
	if n := p.Metadata.Annotations[AnnotationName]; n != "" {
		return containers.SandboxName(NamePrefix + n)
	}
	return containers.SandboxName("k8s", p.Metadata.Namespace, p.Metadata.Name)
}

// PodLabels returns the sandbox labels of a pod: its labels and its
// sluice.dev/* annotations (sluice.dev/policy and sluice.dev/name aside;
// an annotation wins over a label of the same key), the valid ones
// (audit.ValidLabel), at most audit.MaxLabels in key order; nil without.
func PodLabels(p *Pod) map[string]string {
	all := map[string]string{}
	for k, v := range p.Metadata.Labels {
		all[k] = v
	}
	for k, v := range p.Metadata.Annotations {
		if strings.HasPrefix(k, "sluice.dev/") {
			all[k] = v
		}
	}
	return containers.AnnotationLabels(all)
}

// labelsKey is a canonical text of labels (to notice a change).
func labelsKey(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(m[k])
		b.WriteByte(0)
	}
	return b.String()
}

// Attached returns the sandboxes the reconciler believes attached, sorted.
func (r *Reconciler) Attached() []string {
	var out []string
	for _, s := range r.attached {
		out = append(out, s.sandbox)
	}
	sort.Strings(out)
	return out
}

// Handle returns the actions for one event. The caller applies them and
// reports failures with Failed, so that the next event retries.
func (r *Reconciler) Handle(ev Event) []Action {
	p := &ev.Object
	uid := p.Metadata.UID
	if uid == "" {
		return nil
	}
	key := p.Metadata.Namespace + "/" + p.Metadata.Name
	cur, isAttached := r.attached[uid]
	detach := func(reason string) []Action {
		if !isAttached {
			return nil
		}
		delete(r.attached, uid)
		return []Action{{Op: OpDetach, Sandbox: cur.sandbox, Pod: key, UID: uid, Reason: reason}}
	}
	switch ev.Type {
	case "ADDED", "MODIFIED":
	case "DELETED":
		return detach("pod deleted")
	default:
		return nil
	}
	policy := strings.TrimSpace(p.Metadata.Annotations[AnnotationPolicy])
	switch {
	case r.node != "" && p.Spec.NodeName != r.node:
		return detach("pod is not on this node")
	case policy == "":
		return detach("annotation " + AnnotationPolicy + " removed")
	case p.Metadata.DeletionTimestamp != nil:
		// Keep enforcing while the pod shuts down gracefully; detach once
		// its containers are gone.
		if runningContainer(p) != "" {
			return nil
		}
		return detach("pod terminating, no container left")
	case p.Status.Phase == "Succeeded" || p.Status.Phase == "Failed":
		return detach("pod " + strings.ToLower(p.Status.Phase))
	}
	cid := runningContainer(p)
	if cid == "" {
		return nil // not started yet (Pending) or between restarts
	}
	sandbox := SandboxFor(p)
	labels := PodLabels(p)
	lk := labelsKey(labels)
	if isAttached && cur.policy == policy && cur.sandbox == sandbox && cur.labels == lk {
		return nil
	}
	var acts []Action
	reason := "pod running"
	if isAttached && cur.sandbox != sandbox {
		acts = append(acts, Action{Op: OpDetach, Sandbox: cur.sandbox, Pod: key, UID: uid, Reason: "sandbox name changed"})
	} else if isAttached && cur.policy != policy {
		reason = "policy changed from " + cur.policy
	} else if isAttached {
		reason = "labels changed"
	}
	r.attached[uid] = podState{sandbox: sandbox, policy: policy, labels: lk}
	return append(acts, Action{Op: OpAttach, Sandbox: sandbox, Pod: key, UID: uid, Policy: policy, ContainerID: cid, Labels: labels, Reason: reason})
}

// Failed forgets that an attach happened, so the pod's next event retries.
func (r *Reconciler) Failed(a Action) {
	if a.Op != OpAttach {
		return
	}
	if s, ok := r.attached[a.UID]; ok && s.sandbox == a.Sandbox {
		delete(r.attached, a.UID)
	}
}

// Sync reconciles against a full pod list (after a list, or a relist when
// the watch expired) and the sandboxes the daemon holds: it forgets pods
// that are gone, detaches daemon sandboxes named with NamePrefix that no
// listed pod owns, and attaches what the list calls for. Sandboxes without
// the prefix are never touched.
func (r *Reconciler) Sync(pods []Pod, daemonSandboxes []string) []Action {
	var acts []Action
	seen := map[string]bool{}
	for i := range pods {
		seen[pods[i].Metadata.UID] = true
	}
	uids := make([]string, 0, len(r.attached))
	for uid := range r.attached {
		uids = append(uids, uid)
	}
	sort.Strings(uids)
	for _, uid := range uids {
		if !seen[uid] {
			s := r.attached[uid]
			delete(r.attached, uid)
			acts = append(acts, Action{Op: OpDetach, Sandbox: s.sandbox, UID: uid, Reason: "pod gone"})
		}
	}
	for i := range pods {
		acts = append(acts, r.Handle(Event{Type: "MODIFIED", Object: pods[i]})...)
	}
	owned := map[string]bool{}
	for _, s := range r.attached {
		owned[s.sandbox] = true
	}
	for _, a := range acts {
		if a.Op == OpDetach {
			owned[a.Sandbox] = true // already being detached
		}
	}
	stale := append([]string(nil), daemonSandboxes...)
	sort.Strings(stale)
	for _, name := range stale {
		if strings.HasPrefix(name, NamePrefix) && !owned[name] {
			acts = append(acts, Action{Op: OpDetach, Sandbox: name, Reason: "no pod on this node owns it"})
		}
	}
	return acts
}

// runningContainer returns the id of a running container of the pod (init
// containers first), or "".
func runningContainer(p *Pod) string {
	for _, list := range [][]ContainerStatus{p.Status.InitContainerStatuses, p.Status.ContainerStatuses} {
		for _, c := range list {
			if c.State.Running != nil && c.ContainerID != "" {
				return c.ContainerID
			}
		}
	}
	return ""
}
