package containers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/sluice-dev/sluice/pkg/cgroup"
)

// Runtime names.
const (
	RuntimeDocker     = "docker"
	RuntimeContainerd = "containerd"
	// RuntimeCRIO is CRI-O, and Podman (the same containers/storage state);
	// Kubernetes names CRI-O container ids "cri-o://ID".
	RuntimeCRIO = "cri-o"
)

// Default locations of the runtimes' state.
const (
	DefaultDockerSocket    = "/var/run/docker.sock"
	DefaultContainerdState = "/run/containerd/io.containerd.runtime.v2.task"
	DefaultCRIORunRoot     = "/run/containers/storage"
)

// Target is a resolved container: what the daemon attaches to.
type Target struct {
	Runtime string `json:"runtime"`
	// ID is the runtime's full container id.
	ID string `json:"id"`
	// Name is the runtime's name for the container, when it has one.
	Name string `json:"name,omitempty"`
	// Namespace is the containerd namespace (k8s.io, moby, default, ...).
	Namespace string `json:"namespace,omitempty"`
	// PID is the container's init process, in the caller's pid namespace.
	PID int `json:"pid"`
	// Cgroup is the init process's cgroup v2 directory.
	Cgroup string `json:"cgroup"`
	// Netns is the init process's network namespace file (/proc/PID/ns/net).
	Netns string `json:"netns"`
}

// Resolver finds a container by id.
type Resolver interface {
	Resolve(ctx context.Context, id string) (Target, error)
}

// Options locate the runtimes' state. Zero values mean the defaults.
type Options struct {
	DockerSocket    string
	ContainerdState string
	// ContainerdNamespace limits the containerd search to one namespace.
	ContainerdNamespace string
	// CRIORunRoot is the containers/storage run root of CRI-O and Podman.
	CRIORunRoot string
}

// New returns the resolver of one runtime: "docker", "containerd", "cri-o"
// ("crio", "podman"), or "" for whichever is present on this host (Docker's
// socket first, then containerd, then CRI-O).
func New(runtime string, o Options) (Resolver, error) {
	if o.DockerSocket == "" {
		o.DockerSocket = DefaultDockerSocket
	}
	if o.ContainerdState == "" {
		o.ContainerdState = DefaultContainerdState
	}
	if o.CRIORunRoot == "" {
		o.CRIORunRoot = DefaultCRIORunRoot
	}
	switch runtime {
	case RuntimeDocker:
		return NewDocker(o.DockerSocket), nil
	case RuntimeContainerd:
		return &Containerd{StateDir: o.ContainerdState, Namespace: o.ContainerdNamespace}, nil
	case RuntimeCRIO, "crio", "podman":
		return &CRIO{RunRoot: o.CRIORunRoot}, nil
	case "":
		if _, err := os.Stat(o.DockerSocket); err == nil {
			return NewDocker(o.DockerSocket), nil
		}
		if _, err := os.Stat(o.ContainerdState); err == nil {
			return &Containerd{StateDir: o.ContainerdState, Namespace: o.ContainerdNamespace}, nil
		}
		if _, err := os.Stat(o.CRIORunRoot); err == nil {
			return &CRIO{RunRoot: o.CRIORunRoot}, nil
		}
		return nil, fmt.Errorf("no container runtime found: neither the Docker socket %s, containerd's task state %s nor CRI-O's run root %s exists; pass --runtime and the location", o.DockerSocket, o.ContainerdState, o.CRIORunRoot)
	default:
		return nil, fmt.Errorf("unknown container runtime %q: expect 'docker', 'containerd' or 'cri-o' (also 'podman')", runtime)
	}
}

// SplitContainerID splits a Kubernetes-style container id
// ("containerd://abc", "docker://abc") into runtime and id. An id without a
// scheme returns runtime "".
func SplitContainerID(s string) (runtime, id string) {
	if rt, rest, ok := strings.Cut(s, "://"); ok {
		return rt, rest
	}
	return "", s
}

// fillProcess checks that pid is a live process and fills the cgroup and
// network namespace of t from /proc.
func fillProcess(t *Target, pid int) error {
	if pid <= 0 {
		return fmt.Errorf("container %s has no running process (pid %d): is it started?", t.ID, pid)
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return fmt.Errorf("container %s: init process %d: %w (is sluice in the host's pid namespace?)", t.ID, pid, err)
	}
	// "pid (comm) S ..." — comm may hold spaces and parentheses.
	if i := strings.LastIndexByte(string(stat), ')'); i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
		return fmt.Errorf("container %s: init process %d has exited", t.ID, pid)
	}
	cg, err := cgroup.OfPID(pid)
	if err != nil {
		return fmt.Errorf("container %s: %w", t.ID, err)
	}
	ns := "/proc/" + strconv.Itoa(pid) + "/ns/net"
	if _, err := os.Stat(ns); err != nil {
		return fmt.Errorf("container %s: network namespace: %w", t.ID, err)
	}
	t.PID, t.Cgroup, t.Netns = pid, cg, ns
	return nil
}

// SandboxName turns parts into a valid sandbox name (letters, digits, '.',
// '_' and '-', at most 63 characters), joined with '.'. Other characters
// become '-'. A name that would be too long is cut and ends in a short hash
// of the whole, so distinct inputs stay distinct.
func SandboxName(parts ...string) string {
	full := strings.Join(parts, ".")
	b := []byte(full)
	for i, c := range b {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
		if !ok {
			b[i] = '-'
		}
	}
	s := strings.Trim(string(b), ".")
	if s == "" {
		s = "sandbox"
	}
	const max = 63
	if len(s) <= max {
		return s
	}
	sum := sha256.Sum256([]byte(full))
	h := hex.EncodeToString(sum[:])[:8]
	return strings.TrimRight(s[:max-9], ".") + "-" + h
}
