package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/pkg/secrets"
)

type secretSetOptions struct {
	secretOptions
	sandbox  string
	fromFile string
}

func newSecretSetCmd(ro *rootOptions) *cobra.Command {
	o := &secretSetOptions{secretOptions: secretOptions{rootOptions: ro}}
	c := &cobra.Command{
		Use:   "set NAME [--sandbox N] [--from-file F]",
		Short: "Store a secret read from stdin (or --from-file); never from an argument",
		Long: `Store a secret. The value is read from stdin (default) or --from-file, never
from the command line, where it would land in shell history and ps. One
trailing newline is removed. Without --sandbox the secret is global.`,
		Example: `  printf %s "$TOKEN" | sluice secret set GITHUB_TOKEN
  sluice secret set GITHUB_TOKEN --sandbox ci-42 < ./token
  sluice secret set OPENAI_API_KEY --from-file /run/keys/openai --state-dir ./state`,
		Args:         secretNameArg,
		SilenceUsage: true,
		RunE:         func(_ *cobra.Command, args []string) error { return o.run(args[0]) },
	}
	o.addStoreFlags(c)
	c.Flags().StringVar(&o.sandbox, "sandbox", "", "store the secret for this sandbox only (default: global)")
	c.Flags().StringVar(&o.fromFile, "from-file", "", "read the value from this file instead of stdin")
	return c
}

// secretNameArg accepts exactly one NAME and refuses a value given as an
// argument without echoing it.
func secretNameArg(_ *cobra.Command, args []string) error {
	switch {
	case len(args) == 0:
		return errors.New("missing secret NAME")
	case len(args) > 1:
		return errors.New("too many arguments: secret values are never taken from the command line (shell history, ps); pipe the value on stdin or use --from-file")
	case !secrets.ValidName(args[0]):
		return fmt.Errorf("invalid secret name %q: use 1-128 characters from A-Z a-z 0-9 _ . - (not starting with . or -)", args[0])
	}
	return nil
}

func (o *secretSetOptions) run(name string) error {
	var src io.Reader = o.stdin
	what := "stdin"
	if o.fromFile != "" {
		f, err := os.Open(o.fromFile)
		if err != nil {
			return fmt.Errorf("reading secret value: %w", err)
		}
		defer f.Close()
		src, what = f, o.fromFile
	} else if f, ok := o.stdin.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			fmt.Fprintf(o.stderr, "reading the value of %s from the terminal; end with Ctrl-D\n", name)
		}
	}
	if src == nil {
		return errors.New("reading secret value: no stdin")
	}
	b, err := io.ReadAll(io.LimitReader(src, secretsMaxValue+1))
	if err != nil {
		return fmt.Errorf("reading secret value from %s: %w", what, err)
	}
	if len(b) > secretsMaxValue {
		return fmt.Errorf("secret value from %s is larger than %d bytes", what, secretsMaxValue)
	}
	v := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if v == "" {
		return fmt.Errorf("empty secret value from %s: pipe the value on stdin or use --from-file", what)
	}
	st, err := o.open()
	if err != nil {
		return err
	}
	scope := secrets.SandboxScope(o.sandbox)
	if err := st.Set(scope, name, v); err != nil {
		return err
	}
	fmt.Fprintf(o.stdout, "secret %s set (%s)\n", name, scope)
	return nil
}
