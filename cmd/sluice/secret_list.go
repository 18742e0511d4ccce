package main

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/pkg/secrets"
)

type secretListOptions struct {
	secretOptions
	json bool
}

func newSecretListCmd(ro *rootOptions) *cobra.Command {
	o := &secretListOptions{secretOptions: secretOptions{rootOptions: ro}}
	c := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List secret names, scopes and update times (never values)",
		Example: `  sluice secret list
  sluice secret list --json --state-dir ./state`,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE:         func(*cobra.Command, []string) error { return o.run() },
	}
	o.addStoreFlags(c)
	c.Flags().BoolVar(&o.json, "json", false, "print a JSON array")
	return c
}

func (o *secretListOptions) run() error {
	var ents []secrets.Entry
	st, err := o.openExisting()
	if err != nil {
		return err
	}
	if st != nil {
		if ents, err = st.List(); err != nil {
			return err
		}
	}
	if o.json {
		if ents == nil {
			ents = []secrets.Entry{}
		}
		enc := json.NewEncoder(o.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(ents)
	}
	tw := tabwriter.NewWriter(o.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSCOPE\tUPDATED")
	for _, e := range ents {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", e.Name, e.Scope, e.Updated.UTC().Format(time.RFC3339))
	}
	return tw.Flush()
}
