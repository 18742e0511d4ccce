package kube

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/sluice-dev/sluice/pkg/containers"
)

// Daemon is what the pod watch needs of the sluice daemon.
type Daemon interface {
	// Attach attaches (or updates) a sandbox; labels replace its labels.
	Attach(ctx context.Context, name, cgroup, policyFile string, policy []byte, labels map[string]string) error
	Detach(ctx context.Context, name string) error
	List(ctx context.Context) ([]string, error)
}

// Applier carries out actions: it finds the pod cgroup through the
// container runtime and the policy in the policy directories (the mounted
// ConfigMap).
type Applier struct {
	Daemon Daemon
	// Resolvers by runtime scheme of the container id ("containerd", "docker").
	Resolvers map[string]containers.Resolver
	// PolicyDirs hold the policies, one file per name (ConfigMap keys).
	PolicyDirs []string
}

// NewApplier returns an Applier that finds pod containers with the
// runtimes of opts (containerd in opts.ContainerdNamespace, else k8s.io)
// and reads policies from policyDirs.
func NewApplier(d Daemon, opts containers.Options, policyDirs []string) *Applier {
	ns := opts.ContainerdNamespace
	if ns == "" {
		ns = "k8s.io"
	}
	return &Applier{
		Daemon: d,
		Resolvers: map[string]containers.Resolver{
			containers.RuntimeContainerd: &containers.Containerd{StateDir: opts.ContainerdState, Namespace: ns},
			containers.RuntimeDocker:     containers.NewDocker(opts.DockerSocket),
			containers.RuntimeCRIO:       &containers.CRIO{RunRoot: opts.CRIORunRoot},
		},
		PolicyDirs: policyDirs,
	}
}

// Apply carries out one action.
func (a *Applier) Apply(ctx context.Context, act Action) error {
	switch act.Op {
	case OpDetach:
		if err := a.Daemon.Detach(ctx, act.Sandbox); err != nil {
			return fmt.Errorf("detaching %s: %w", act.Sandbox, err)
		}
		return nil
	case OpAttach:
	default:
		return fmt.Errorf("unknown action %q", act.Op)
	}
	file, err := containers.ResolvePolicy(act.Policy, containers.HookConfig{PolicyDirs: a.PolicyDirs})
	if err != nil {
		return fmt.Errorf("pod %s: annotation %s: %w", act.Pod, AnnotationPolicy, err)
	}
	data, err := containers.ReadPolicy(file)
	if err != nil {
		return fmt.Errorf("pod %s: %w", act.Pod, err)
	}
	rt, id := containers.SplitContainerID(act.ContainerID)
	res, ok := a.Resolvers[rt]
	if !ok {
		return fmt.Errorf("pod %s: container %s: runtime %q is not supported (containerd, docker)", act.Pod, act.ContainerID, rt)
	}
	t, err := res.Resolve(ctx, id)
	if err != nil {
		return fmt.Errorf("pod %s: %w", act.Pod, err)
	}
	cg, err := PodCgroup(t.Cgroup, act.UID)
	if err != nil {
		return fmt.Errorf("pod %s: %w", act.Pod, err)
	}
	if err := a.Daemon.Attach(ctx, act.Sandbox, cg, file, data, act.Labels); err != nil {
		return fmt.Errorf("attaching pod %s as %s: %w", act.Pod, act.Sandbox, err)
	}
	return nil
}

// PodCgroup returns the pod-level cgroup of a container's cgroup: its
// parent, which kubelet names after the pod uid with either cgroup driver
// (cgroupfs: .../pod<uid>/<container>; systemd:
// ...-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope). A parent
// that does not carry the uid is refused rather than guessed.
func PodCgroup(containerCgroup, uid string) (string, error) {
	parent := filepath.Dir(containerCgroup)
	base := filepath.Base(parent)
	if uid != "" && (strings.Contains(base, uid) || strings.Contains(base, strings.ReplaceAll(uid, "-", "_"))) {
		return parent, nil
	}
	return "", fmt.Errorf("the parent of container cgroup %s is not the cgroup of pod %s", containerCgroup, uid)
}
