package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/pkg/policy"
)

func newPolicyCheckCmd(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "check FILE...",
		Short: "Validate policies; print every problem as file:line:col",
		Long: `Validate one or more policies. Every problem is printed on stderr as
file:line:col: field: message, all of them at once. Warnings (for example a
plaintext Authorization value) are printed too but do not fail the check.
Exit status 1 when any file is invalid.`,
		Example:      "  sluice policy check policy.yaml testdata/policies/*.yaml",
		Args:         cobra.MinimumNArgs(1),
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			failed := 0
			for _, f := range args {
				p, err := policy.Load(f)
				var perrs policy.Errors
				switch {
				case errors.As(err, &perrs):
					fmt.Fprintln(o.stderr, perrs.Error())
					failed++
				case err != nil:
					fmt.Fprintf(o.stderr, "%s: %v\n", f, err)
					failed++
				default:
					for _, w := range p.Warnings {
						fmt.Fprintln(o.stderr, w.String())
					}
					fmt.Fprintf(o.stdout, "%s: ok (%d rules)\n", f, len(p.Rules))
				}
			}
			if failed > 0 {
				return &exitError{code: 1, err: fmt.Errorf("%d of %d policies invalid", failed, len(args))}
			}
			return nil
		},
	}
}
