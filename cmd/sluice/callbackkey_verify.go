package main

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/pkg/secrets"
)

type callbackVerifyOptions struct {
	key, signature, body string
	maxSkew              time.Duration
}

// newCallbackVerifyCmd checks a callback request's signature the way a
// callback service must: a debugging aid for service authors.
func newCallbackVerifyCmd(ro *rootOptions) *cobra.Command {
	o := &callbackVerifyOptions{}
	c := &cobra.Command{
		Use:   "verify --key FILE --signature HEADER [--body FILE]",
		Short: "Check a Sluice-Signature header against a request body",
		Long: `Check the Sluice-Signature header of a credential callback request (as a
callback service must) against the raw request body, with the public key
printed by sluice callback-key (PEM or JWK). The body is read from --body or
standard input. Exit status 0 when the signature verifies and its timestamp
is within --max-skew of now.`,
		Example: `  sluice callback-key verify --key sluice-callback.pem \
      --signature 't=1764745000,ed25519=...' --body request.json`,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(*cobra.Command, []string) error {
			keyData, err := os.ReadFile(o.key)
			if err != nil {
				return err
			}
			var pub ed25519.PublicKey
			if trimmed := bytes.TrimSpace(keyData); len(trimmed) > 0 && trimmed[0] == '{' {
				pub, err = secrets.ParseJWK(trimmed)
			} else {
				pub, err = secrets.ParsePublicKeyPEM(keyData)
			}
			if err != nil {
				return err
			}
			var body []byte
			if o.body != "" {
				body, err = os.ReadFile(o.body)
			} else {
				body, err = io.ReadAll(io.LimitReader(ro.stdin, 16<<20))
			}
			if err != nil {
				return err
			}
			if err := secrets.Verify(pub, o.signature, body, o.maxSkew); err != nil {
				return err
			}
			_, err = fmt.Fprintf(ro.stdout, "signature valid (key %s)\n", secrets.KeyID(pub))
			return err
		},
	}
	c.Flags().StringVar(&o.key, "key", "", "public key file: PEM or JWK (required)")
	c.Flags().StringVar(&o.signature, "signature", "", "the Sluice-Signature header value (required)")
	c.Flags().StringVar(&o.body, "body", "", "file holding the raw request body (default: standard input)")
	c.Flags().DurationVar(&o.maxSkew, "max-skew", 5*time.Minute, "largest accepted distance between the signature's timestamp and now")
	_ = c.MarkFlagRequired("key")
	_ = c.MarkFlagRequired("signature")
	return c
}
