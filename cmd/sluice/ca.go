package main

import (
	"context"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/pkg/client"
)

func newCACmd(ro *rootOptions) *cobra.Command {
	ca := &cobra.Command{Use: "ca", Short: "Sandbox certificate authorities"}
	ca.AddCommand(&cobra.Command{
		Use:   "export NAME",
		Short: "Print the PEM certificate of a sandbox's CA",
		Long: `Print the sandbox CA's certificate. Install it in the sandbox's trust store
(or point SSL_CERT_FILE and friends at a bundle holding it) so clients accept
the proxy's certificates for intercepted hosts. The private key never leaves
the daemon's state directory.`,
		Example:      "  sluice ca export agent-42 > /sandboxes/42/etc/ssl/sluice-ca.pem",
		Args:         cobra.ExactArgs(1),
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			pem, err := client.New(ro.socket).CA(ctx, args[0])
			if err != nil {
				return err
			}
			_, err = ro.stdout.Write(pem)
			return err
		},
	})
	return ca
}
