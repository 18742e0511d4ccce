package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/pkg/api"
	"github.com/sluice-dev/sluice/pkg/client"
	"github.com/sluice-dev/sluice/pkg/daemon"
)

type attachOptions struct {
	policy string
	cgroup string
	pid    int
	name   string
	json   bool
	labels []string
}

func newAttachCmd(ro *rootOptions) *cobra.Command {
	o := &attachOptions{}
	var cf *containerFlags
	cmd := &cobra.Command{
		Use:   "attach --policy FILE (--cgroup PATH | --pid PID | --container ID) [--name N]",
		Short: "Enforce a policy on a cgroup (through the daemon)",
		Long: `Attach a sandbox: the daemon registers the cgroup (and every cgroup below
it), attaches the eBPF programs, and serves its resolver and proxy. With --pid,
the cgroup and network namespace of that process are used; in a separate
network namespace the daemon opens the sandbox's listeners inside it.
Attaching again under the same name replaces the policy live (and the labels,
when --label is given).

Labels (--label key=value, repeatable) are kept with the sandbox, shown by
sluice list, put on every audit event of the sandbox and sent as "labels" in
its credential callback requests, so a credential service can mint per-user
tokens.`,
		Example: `  sluice attach --policy agent.yaml --pid 4242 --name agent-42
  sluice attach --policy agent.yaml --container 3f2a9c --runtime docker
  sluice attach --policy agent.yaml --cgroup /sys/fs/cgroup/sandboxes/42 --name agent-42
  sluice attach --policy agent.yaml --pid 4242 --label user=alice --label team=ml`,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if t, ok, err := cf.resolve(cmd.Context()); err != nil {
				return err
			} else if ok && o.pid == 0 && o.cgroup == "" {
				o.pid = t.PID
				if o.name == "" {
					o.name = cf.sandboxName(t)
				}
			} else if ok {
				return fmt.Errorf("give only one of --cgroup, --pid or --container")
			}
			if (o.cgroup == "") == (o.pid == 0) {
				return fmt.Errorf("give exactly one of --cgroup PATH, --pid PID or --container ID")
			}
			text, err := os.ReadFile(o.policy)
			if err != nil {
				return err
			}
			name := o.name
			if name == "" {
				if o.pid != 0 {
					name = fmt.Sprintf("pid-%d", o.pid)
				} else {
					return fmt.Errorf("--name is required with --cgroup")
				}
			}
			labels, err := daemon.ParseLabels(o.labels)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			info, err := client.New(ro.socket).Attach(ctx, api.AttachRequest{
				Name: name, Cgroup: o.cgroup, PID: o.pid, PolicyFile: o.policy, Policy: string(text), Labels: labels})
			if err != nil {
				return err
			}
			if o.json {
				return json.NewEncoder(ro.stdout).Encode(info)
			}
			for _, w := range info.Warnings {
				fmt.Fprintln(ro.stderr, "sluice:", w)
			}
			fmt.Fprintf(ro.stdout, "attached %s (cgroup %s, %d rules, %s)\n", info.Name, info.Cgroup, info.Rules, info.Mode)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.policy, "policy", "", "policy file (required)")
	f.StringVar(&o.cgroup, "cgroup", "", "cgroup path (absolute, or relative to the cgroup2 mount)")
	f.IntVar(&o.pid, "pid", 0, "a process of the sandbox")
	f.StringVar(&o.name, "name", "", "sandbox name (default pid-PID)")
	f.BoolVar(&o.json, "json", false, "print JSON")
	f.StringArrayVar(&o.labels, "label", nil, "label KEY=VALUE of the sandbox (repeatable): on audit events and in callback requests")
	cf = addContainerFlags(f, true)
	_ = cmd.MarkFlagRequired("policy")
	return cmd
}
