package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/pkg/api"
	"github.com/sluice-dev/sluice/pkg/client"
	"github.com/sluice-dev/sluice/pkg/daemon"
	"github.com/sluice-dev/sluice/pkg/runner"
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

func newDetachCmd(ro *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use:          "detach NAME",
		Short:        "Stop enforcing on a sandbox and remove everything sluice holds for it",
		Example:      "  sluice detach agent-42",
		Args:         cobra.ExactArgs(1),
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := client.New(ro.socket).Detach(ctx, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(ro.stdout, "detached %s\n", args[0])
			return nil
		},
	}
}

type listOptions struct{ json bool }

func newListCmd(ro *rootOptions) *cobra.Command {
	o := &listOptions{}
	cmd := &cobra.Command{
		Use:          "list",
		Short:        "List the sandboxes the daemon enforces and the live sluice run sandboxes",
		Example:      "  sluice list\n  sluice list --json",
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			infos, err := client.New(ro.socket).List(ctx)
			runs := runner.List() // live `sluice run` sandboxes
			// Without a daemon (no socket, nobody listening) the runs are
			// all there is; any other failure (permission denied, a bad
			// answer) is an error, not a shorter list.
			noDaemon := errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)
			if err != nil && (len(runs) == 0 || !noDaemon) {
				return err
			}
			if err != nil {
				fmt.Fprintln(ro.stderr, "sluice: the daemon is not reachable; listing sluice run sandboxes only:", err)
			}
			infos = append(infos, runs...)
			if o.json {
				enc := json.NewEncoder(ro.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(infos)
			}
			if len(infos) == 0 {
				fmt.Fprintln(ro.stdout, "no sandboxes attached")
				return nil
			}
			w := tabwriter.NewWriter(ro.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tCGROUP\tNETNS\tPOLICY\tMODE\tRULES\tUPDATED\tLABELS")
			for _, i := range infos {
				ns := i.Netns
				if ns == "" {
					ns = "host"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", i.Name, i.Cgroup, ns, i.Policy, i.Mode, i.Rules, i.Updated.Format(time.RFC3339), labelsText(i.Labels))
			}
			return w.Flush()
		},
	}
	cmd.Flags().BoolVar(&o.json, "json", false, "print JSON")
	return cmd
}

func newCACmd(ro *rootOptions) *cobra.Command {
	ca := &cobra.Command{Use: "ca", Short: "Sandbox certificate authorities"}
	ca.AddCommand(&cobra.Command{
		Use:   "export NAME",
		Short: "Print the PEM certificate of a sandbox's CA",
		Long: `Print the sandbox CA's certificate. Install it in the sandbox's trust store
(or point SSL_CERT_FILE and friends at a bundle holding it) so clients accept
the proxy's certificates for intercepted hosts. The private key never leaves
the daemon's state directory.`,
		Example:      "  sluice ca export agent-42 > /sandboxes/42/etc/ssl/sluice-ca.pem",
		Args:         cobra.ExactArgs(1),
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			pem, err := client.New(ro.socket).CA(ctx, args[0])
			if err != nil {
				return err
			}
			_, err = ro.stdout.Write(pem)
			return err
		},
	})
	return ca
}

// labelsText renders labels as k=v,k=v sorted by key ("-" without).
func labelsText(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		keys[i] = k + "=" + m[k]
	}
	return strings.Join(keys, ",")
}
