package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/policy/suggest"
)

type policySuggestOptions struct {
	from    string
	sandbox string
	output  string
}

func newPolicySuggestCmd(o *rootOptions) *cobra.Command {
	var so policySuggestOptions
	c := &cobra.Command{
		Use:   "suggest --from AUDIT.jsonl [--sandbox NAME]",
		Short: "Write the minimal policy that allows what an audit log recorded",
		Long: `Write a commented policy that, in enforce mode, allows every DNS answer,
connection and HTTP request the audit log recorded as allowed or would_deny
(run the workload once under mode: audit), and nothing else: hosts, ports,
methods, paths (siblings collapsed to globs), processes: when only one
executable used a host, and injected headers with a secret placeholder
(secret values are never guessed). The policy is checked against the log
before it is written: every recorded decision it must allow is replayed.`,
		Example: `  sluice run --policy audit.yaml --audit run.jsonl -- make test
  sluice policy suggest --from run.jsonl > policy.yaml
  sluice policy check policy.yaml`,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if so.from == "" {
				return errors.New("--from AUDIT.jsonl is required")
			}
			evs, err := audit.ReadFile(so.from)
			if err != nil {
				return err
			}
			res, err := suggest.Suggest(evs, suggest.Options{Sandbox: so.sandbox, Source: so.from})
			if err != nil {
				return err
			}
			if so.output == "" || so.output == "-" {
				_, err = o.stdout.Write(res.YAML)
			} else {
				err = os.WriteFile(so.output, res.YAML, 0o644)
			}
			if err != nil {
				return fmt.Errorf("writing the policy: %w", err)
			}
			fmt.Fprintf(o.stderr, "suggested %d rules from %d events (%d skipped); replayed %d recorded decisions: all allowed\n",
				len(res.Policy.Rules), res.Events, res.Skipped, len(res.Observations))
			return nil
		},
	}
	c.Flags().StringVar(&so.from, "from", "", "audit log (JSON lines) to read")
	c.Flags().StringVar(&so.sandbox, "sandbox", "", "only the events of this sandbox")
	c.Flags().StringVarP(&so.output, "output", "o", "", "write the policy to this file instead of stdout")
	return c
}
