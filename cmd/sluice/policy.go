package main

import (
	"github.com/spf13/cobra"
)

// exitPolicyDenied is the exit status of `policy explain` for a refused request.
const exitPolicyDenied = 3

func newPolicyCmd(o *rootOptions) *cobra.Command {
	c := &cobra.Command{
		Use:   "policy",
		Short: "Check, explain and compare policies before deploying them",
		Example: `  sluice policy check policy.yaml
  sluice policy explain policy.yaml GET https://api.github.com/repos/o/r
  sluice policy diff old.yaml new.yaml --audit audit.jsonl`,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
	}
	c.AddCommand(newPolicyCheckCmd(o), newPolicyExplainCmd(o), newPolicyDiffCmd(o), newPolicySuggestCmd(o))
	return c
}
