package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/policy"
)

type policyDiffOptions struct {
	audit string
	json  bool
}

func newPolicyDiffCmd(o *rootOptions) *cobra.Command {
	var do policyDiffOptions
	c := &cobra.Command{
		Use:   "diff OLD NEW --audit LOG.jsonl",
		Short: "Replay an audit log against two policies and list changed decisions",
		Long: `Replay the DNS queries, connections and HTTP requests recorded in an audit
log against two policies and list every decision that would change: requests
newly denied and newly allowed. Identical events are merged with a count.
Kernel, secret and other events are skipped. An http event without a
destination port is replayed on port 443.`,
		Example:      "  sluice policy diff policy.yaml policy-next.yaml --audit /var/log/sluice/audit.jsonl",
		Args:         cobra.ExactArgs(2),
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if do.audit == "" {
				return errors.New("--audit LOG.jsonl is required")
			}
			oldP, err := policy.Load(args[0])
			if err != nil {
				return err
			}
			newP, err := policy.Load(args[1])
			if err != nil {
				return err
			}
			f, err := os.Open(do.audit)
			if err != nil {
				return fmt.Errorf("reading audit log: %w", err)
			}
			defer f.Close()
			var obs []policy.Observation
			skipped := 0
			if err := audit.Decode(f, func(ev audit.Event) error {
				if o, ok := policy.ObservationOf(ev); ok {
					obs = append(obs, o)
				} else {
					skipped++
				}
				return nil
			}); err != nil {
				return fmt.Errorf("%s: %w", do.audit, err)
			}
			changes := policy.Diff(oldP, newP, obs)
			if do.json {
				return writePolicyDiffJSON(o.stdout, len(obs), skipped, changes)
			}
			return writePolicyDiff(o.stdout, len(obs), skipped, changes)
		},
	}
	c.Flags().StringVar(&do.audit, "audit", "", "audit log (JSON lines) to replay")
	c.Flags().BoolVar(&do.json, "json", false, "print the changes as JSON")
	return c
}

func policyDescribe(d policy.Decision) string {
	s := d.Verdict
	if d.Rule != "" {
		s += " by " + d.Rule
	} else if !d.Allowed {
		s += " (no rule)"
	}
	return s
}

func writePolicyDiff(w io.Writer, n, skipped int, changes []policy.Change) error {
	fmt.Fprintf(w, "replayed %d events (%d skipped): %d changed decisions\n", n, skipped, len(changes))
	for _, group := range []struct {
		title  string
		denied bool
	}{{"newly denied", true}, {"newly allowed", false}} {
		var rows []policy.Change
		for _, c := range changes {
			if c.NewlyDenied() == group.denied {
				rows = append(rows, c)
			}
		}
		if len(rows) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n%s (%d):\n", group.title, len(rows))
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  KIND\tTARGET\tCOUNT\tOLD\tNEW")
		for _, c := range rows {
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%s\n", c.Obs.Kind, c.Obs.Target(), c.Count, policyDescribe(c.Old), policyDescribe(c.New))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

type policyDiffJSON struct {
	Events  int                `json:"events"`
	Skipped int                `json:"skipped"`
	Changes []policyChangeJSON `json:"changes"`
}

type policyChangeJSON struct {
	Change  string `json:"change"` // newly_denied or newly_allowed
	Kind    string `json:"kind"`
	Target  string `json:"target"`
	Count   int    `json:"count"`
	Old     string `json:"old"`
	OldRule string `json:"old_rule,omitempty"`
	New     string `json:"new"`
	NewRule string `json:"new_rule,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

func writePolicyDiffJSON(w io.Writer, n, skipped int, changes []policy.Change) error {
	out := policyDiffJSON{Events: n, Skipped: skipped, Changes: []policyChangeJSON{}}
	for _, c := range changes {
		kind := "newly_allowed"
		if c.NewlyDenied() {
			kind = "newly_denied"
		}
		out.Changes = append(out.Changes, policyChangeJSON{Change: kind, Kind: c.Obs.Kind, Target: c.Obs.Target(), Count: c.Count,
			Old: c.Old.Verdict, OldRule: c.Old.Rule, New: c.New.Verdict, NewRule: c.New.Rule, Reason: c.New.Reason})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(out)
}
