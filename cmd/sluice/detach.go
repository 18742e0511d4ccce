package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/pkg/client"
)

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
