package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

type manOptions struct{ dir string }

func newManCmd(ro *rootOptions) *cobra.Command {
	o := &manOptions{}
	cmd := &cobra.Command{
		Use:          "man --dir DIR",
		Short:        "Write the man pages of every command into DIR",
		Example:      "  sluice man --dir dist/man/man1 && gzip -9n dist/man/man1/*.1",
		Hidden:       true,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := os.MkdirAll(o.dir, 0o755); err != nil {
				return err
			}
			root := cmd.Root()
			root.DisableAutoGenTag = true
			hdr := &doc.GenManHeader{Title: "SLUICE", Section: "1", Source: "sluice " + version, Manual: "sluice manual"}
			if err := doc.GenManTree(root, hdr, o.dir); err != nil {
				return fmt.Errorf("writing man pages: %w", err)
			}
			fmt.Fprintf(ro.stdout, "man pages written to %s\n", o.dir)
			return nil
		},
	}
	cmd.Flags().StringVar(&o.dir, "dir", "", "output directory (required)")
	_ = cmd.MarkFlagRequired("dir")
	return cmd
}
