package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"
)

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
