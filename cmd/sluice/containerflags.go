package main

import (
	"context"

	"github.com/spf13/pflag"

	"github.com/sluice-dev/sluice/pkg/containers"
)

// containerFlags select a container and its runtime. attach uses them
// through addContainerFlags and resolve.
type containerFlags struct {
	id              string
	runtime         string
	dockerSocket    string
	containerdState string
	namespace       string
	crioRoot        string
}

func addContainerFlags(f *pflag.FlagSet, withID bool) *containerFlags {
	c := &containerFlags{}
	if withID {
		f.StringVar(&c.id, "container", "", "a container id, unique id prefix or (Docker) name: attach its init process")
	}
	f.StringVar(&c.runtime, "runtime", "", "container runtime: docker, containerd or cri-o (also podman) (default: whichever is present)")
	f.StringVar(&c.dockerSocket, "docker-socket", containers.DefaultDockerSocket, "Docker Engine API socket")
	f.StringVar(&c.containerdState, "containerd-state", containers.DefaultContainerdState, "containerd runtime v2 task state directory")
	f.StringVar(&c.namespace, "namespace", "", "containerd namespace (default: search all)")
	f.StringVar(&c.crioRoot, "crio-root", containers.DefaultCRIORunRoot, "CRI-O / Podman containers/storage run root")
	return c
}

func (c *containerFlags) options() containers.Options {
	return containers.Options{DockerSocket: c.dockerSocket, ContainerdState: c.containerdState, ContainerdNamespace: c.namespace, CRIORunRoot: c.crioRoot}
}

// resolve finds the container named by --container; ok is false when the
// flag is unset.
func (c *containerFlags) resolve(ctx context.Context) (t containers.Target, ok bool, err error) {
	if c.id == "" {
		return t, false, nil
	}
	res, err := containers.New(c.runtime, c.options())
	if err != nil {
		return t, false, err
	}
	if ctx == nil {
		ctx = context.Background()
	}
	t, err = res.Resolve(ctx, c.id)
	return t, err == nil, err
}

// sandboxName is the default sandbox name of a container: its runtime
// name, or the start of its id.
func (c *containerFlags) sandboxName(t containers.Target) string {
	if t.Name != "" {
		return containers.SandboxName(t.Name)
	}
	id := t.ID
	if len(id) > 12 {
		id = id[:12]
	}
	return containers.SandboxName(id)
}
