package main

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/pkg/blocked"
	"github.com/sluice-dev/sluice/pkg/defaults"
	"github.com/sluice-dev/sluice/pkg/enforcer"
	"github.com/sluice-dev/sluice/pkg/statedir"
)

type blockedOptions struct {
	json     bool
	watch    bool
	interval time.Duration
	pinDir   string
	stateDir string
}

func newBlockedCmd(ro *rootOptions) *cobra.Command {
	o := &blockedOptions{}
	cmd := &cobra.Command{
		Use:   "blocked [NAME]",
		Short: "List connections the kernel refused, per sandbox",
		Long: `List the kernel's refusal counters: sandbox, destination, port, protocol,
reason, count and last time seen. It reads the pinned eBPF maps directly, so it
works while the daemon is down. Needs root (or CAP_BPF).`,
		Example: `  sluice blocked
  sluice blocked agent-42 --json
  sluice blocked --watch`,
		Args:         cobra.MaximumNArgs(1),
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			name := ""
			if len(args) == 1 {
				name = args[0]
			}
			for {
				rows, err := blocked.Read(o.pinDir, statedir.Dir(o.stateDir), name)
				if err != nil {
					return err
				}
				if o.json {
					enc := json.NewEncoder(ro.stdout)
					enc.SetIndent("", "  ")
					if err := enc.Encode(rows); err != nil {
						return err
					}
				} else {
					if o.watch {
						fmt.Fprint(ro.stdout, "\033[H\033[2J")
					}
					printBlocked(ro, rows)
				}
				if !o.watch {
					return nil
				}
				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(o.interval):
				}
			}
		},
	}
	cmd.Flags().BoolVar(&o.json, "json", false, "print JSON")
	cmd.Flags().BoolVar(&o.watch, "watch", false, "refresh until interrupted")
	cmd.Flags().DurationVar(&o.interval, "interval", 2*time.Second, "refresh interval with --watch")
	cmd.Flags().StringVar(&o.pinDir, "pin-dir", enforcer.DefaultPinDir, "bpffs directory of the pinned maps")
	cmd.Flags().StringVar(&o.stateDir, "state-dir", defaults.StateDir, "daemon state directory (for sandbox names)")
	return cmd
}

func printBlocked(ro *rootOptions, rows []blocked.Row) {
	if len(rows) == 0 {
		fmt.Fprintln(ro.stdout, "no refused connections")
		return
	}
	w := tabwriter.NewWriter(ro.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "SANDBOX\tDESTINATION\tPORT\tPROTO\tREASON\tCOUNT\tLAST SEEN")
	for _, r := range rows {
		if r.Dst == "" {
			r.Dst = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%d\t%s\n", r.Sandbox, r.Dst, r.Port, r.Proto, r.Reason, r.Count, r.LastSeen.Format(time.RFC3339))
	}
	w.Flush()
}
