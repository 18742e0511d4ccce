package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/pkg/secrets"
)

type secretRmOptions struct {
	secretOptions
	sandbox string
}

func newSecretRmCmd(ro *rootOptions) *cobra.Command {
	o := &secretRmOptions{secretOptions: secretOptions{rootOptions: ro}}
	c := &cobra.Command{
		Use:     "rm NAME [--sandbox N]",
		Aliases: []string{"delete"},
		Short:   "Remove a secret",
		Example: `  sluice secret rm OPENAI_API_KEY
  sluice secret rm GITHUB_TOKEN --sandbox ci-42`,
		Args:         cobra.ExactArgs(1),
		SilenceUsage: true,
		RunE:         func(_ *cobra.Command, args []string) error { return o.run(args[0]) },
	}
	o.addStoreFlags(c)
	c.Flags().StringVar(&o.sandbox, "sandbox", "", "remove the sandbox-scoped secret (default: global)")
	return c
}

func (o *secretRmOptions) run(name string) error {
	scope := secrets.SandboxScope(o.sandbox)
	st, err := o.openExisting()
	if err != nil {
		return err
	}
	if st == nil {
		return fmt.Errorf("secret %s (%s): %w", name, scope, secrets.ErrNotFound)
	}
	if err := st.Delete(scope, name); err != nil {
		return err
	}
	fmt.Fprintf(o.stdout, "secret %s removed (%s)\n", name, scope)
	return nil
}
