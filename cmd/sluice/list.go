package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/pkg/client"
	"github.com/sluice-dev/sluice/pkg/runner"
)

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
			if err != nil && (len(runs) == 0 || !client.NoDaemon(err)) {
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
