package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/client-go/kubernetes"

	"github.com/sluice-dev/sluice/pkg/client"
	"github.com/sluice-dev/sluice/pkg/containers"
	"github.com/sluice-dev/sluice/pkg/defaults"
	"github.com/sluice-dev/sluice/pkg/kube"
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

type containerResolveOptions struct{ json bool }

func newContainerCmd(ro *rootOptions) *cobra.Command {
	top := &cobra.Command{Use: "container", Short: "Find containers' processes, cgroups and network namespaces"}
	o := &containerResolveOptions{}
	res := &cobra.Command{
		Use:   "resolve ID",
		Short: "Print the init pid, cgroup and network namespace of a container",
		Long: `Ask the container runtime for a container's init process (Docker: the Engine
API on its socket; containerd: the runtime v2 task state) and print what
'sluice attach --container ID' attaches.`,
		Example:      "  sluice container resolve 4f1c2a\n  sluice container resolve --runtime containerd --namespace k8s.io 8d3b1c0f --json",
		Args:         cobra.ExactArgs(1),
		SilenceUsage: true,
	}
	cf := addContainerFlags(res.Flags(), false)
	res.Flags().BoolVar(&o.json, "json", false, "print JSON")
	res.RunE = func(cmd *cobra.Command, args []string) error {
		cf.id = args[0]
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		t, _, err := cf.resolve(ctx)
		if err != nil {
			return err
		}
		if o.json {
			return json.NewEncoder(ro.stdout).Encode(t)
		}
		fmt.Fprintf(ro.stdout, "runtime\t%s\nid\t%s\n", t.Runtime, t.ID)
		if t.Name != "" {
			fmt.Fprintf(ro.stdout, "name\t%s\n", t.Name)
		}
		if t.Namespace != "" {
			fmt.Fprintf(ro.stdout, "namespace\t%s\n", t.Namespace)
		}
		fmt.Fprintf(ro.stdout, "pid\t%d\ncgroup\t%s\nnetns\t%s\n", t.PID, t.Cgroup, t.Netns)
		return nil
	}
	top.AddCommand(res)
	return top
}

type kubeWatchOptions struct {
	node       string
	policyDirs []string
	api        string
	ca         string
	tokenFile  string
	logLevel   string
}

func newKubeWatchCmd(ro *rootOptions) *cobra.Command {
	o := &kubeWatchOptions{}
	cmd := &cobra.Command{
		Use:   "kube-watch --node NODE [--policy-dir DIR]...",
		Short: "Attach the pods of this Kubernetes node that carry sluice.dev/policy",
		Long: `Watch the pods scheduled on NODE through the Kubernetes API (the pod's
service account by default) and attach every pod annotated
sluice.dev/policy: NAME with the policy NAME from the policy directories (a
mounted ConfigMap), detaching it when it ends. One sandbox per pod: the pod's
cgroup, found through the container runtime's state. Sandboxes are named
k8s.NAMESPACE.POD (or k8s. and sluice.dev/name); on start, sandboxes with
that prefix that no pod on the node owns are detached.`,
		Example:      "  sluice kube-watch --node \"$NODE_NAME\" --policy-dir /etc/sluice/policies",
		Args:         cobra.NoArgs,
		SilenceUsage: true,
	}
	cf := addContainerFlags(cmd.Flags(), false)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if o.node == "" {
			return fmt.Errorf("--node is required (in a DaemonSet: the downward API's spec.nodeName)")
		}
		var lvl slog.Level
		if err := lvl.UnmarshalText([]byte(o.logLevel)); err != nil {
			return err
		}
		log := slog.New(slog.NewJSONHandler(ro.stderr, &slog.HandlerOptions{Level: lvl})).With("component", "kube-watch")
		var kc kubernetes.Interface
		var err error
		if o.api != "" {
			kc, err = kube.NewClientset(o.api, o.ca, o.tokenFile)
		} else {
			kc, err = kube.InClusterClientset()
		}
		if err != nil {
			return err
		}
		opts := cf.options()
		ap := &kube.Applier{
			Daemon: client.PodSandboxes{Client: client.New(ro.socket)},
			Resolvers: map[string]containers.Resolver{
				containers.RuntimeContainerd: &containers.Containerd{StateDir: opts.ContainerdState, Namespace: "k8s.io"},
				containers.RuntimeDocker:     containers.NewDocker(opts.DockerSocket),
				containers.RuntimeCRIO:       &containers.CRIO{RunRoot: opts.CRIORunRoot},
			},
			PolicyDirs: o.policyDirs,
		}
		if cf.namespace != "" {
			ap.Resolvers[containers.RuntimeContainerd] = &containers.Containerd{StateDir: opts.ContainerdState, Namespace: cf.namespace}
		}
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		log.Info("watching pods", "node", o.node, "policy_dirs", o.policyDirs)
		return kube.Run(ctx, kc, o.node, ap, log)
	}
	f := cmd.Flags()
	f.StringVar(&o.node, "node", "", "this node's name (required)")
	f.StringArrayVar(&o.policyDirs, "policy-dir", []string{defaults.PolicyDir}, "directory of named policies (repeatable)")
	f.StringVar(&o.api, "kube-api", "", "API server URL (default: in-cluster)")
	f.StringVar(&o.ca, "kube-ca", "", "PEM roots for --kube-api")
	f.StringVar(&o.tokenFile, "kube-token-file", "", "bearer token file for --kube-api")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}
