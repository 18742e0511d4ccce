package main

import (
	"crypto/ed25519"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/pkg/secrets"
)

type callbackKeyOptions struct {
	*rootOptions
	stateDir string
	jwk      bool
}

func newCallbackKeyCmd(ro *rootOptions) *cobra.Command {
	o := &callbackKeyOptions{rootOptions: ro}
	c := &cobra.Command{
		Use:   "callback-key [--state-dir DIR] [--jwk]",
		Short: "Print the public key that verifies credential callback requests",
		Long: `Print the Ed25519 public key whose private half signs every credential
callback request (PEM by default, a JWK with --jwk). The key pair is created in
the state directory on first use.

Each callback request carries the header

  Sluice-Signature: t=<unix seconds>,ed25519=<base64 signature>

where the signature (standard base64, padded) is Ed25519 over the bytes
"<t>.<body>": the decimal timestamp as sent, a dot, then the raw request body.
Verify it with this key and refuse timestamps far from the current time.`,
		Example: `  sluice callback-key > sluice-callback.pem
  sluice callback-key --jwk --state-dir ./state`,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE:         func(*cobra.Command, []string) error { return o.run() },
	}
	c.Flags().StringVar(&o.stateDir, "state-dir", secretsDefaultStateDir(), "state directory holding the signing key (env SLUICE_STATE_DIR)")
	c.Flags().BoolVar(&o.jwk, "jwk", false, "print a JWK (kty OKP, crv Ed25519) instead of PEM")
	c.AddCommand(newCallbackVerifyCmd(ro))
	return c
}

func (o *callbackKeyOptions) run() error {
	priv, err := secrets.LoadOrCreateSigningKey(o.stateDir)
	if err != nil {
		return err
	}
	pub := priv.Public().(ed25519.PublicKey)
	if o.jwk {
		b, err := secrets.PublicKeyJWK(pub)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(o.stdout, "%s\n", b)
		return err
	}
	b, err := secrets.PublicKeyPEM(pub)
	if err != nil {
		return err
	}
	_, err = o.stdout.Write(b)
	return err
}
