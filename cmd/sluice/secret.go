package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/pkg/defaults"
	"github.com/sluice-dev/sluice/pkg/secrets"
)

// secretsDefaultStateDir is where the daemon keeps its state (env SLUICE_STATE_DIR).
func secretsDefaultStateDir() string {
	return defaults.FromEnv(defaults.EnvStateDir, defaults.StateDir)
}

// secretsMaxValue bounds a value read from stdin or a file.
const secretsMaxValue = 1 << 20

type secretOptions struct {
	*rootOptions
	stateDir string
	keyFile  string
	keyEnv   string
}

func (o *secretOptions) addStoreFlags(c *cobra.Command) {
	c.Flags().StringVar(&o.stateDir, "state-dir", secretsDefaultStateDir(), "state directory holding the secret store (env SLUICE_STATE_DIR)")
	c.Flags().StringVar(&o.keyFile, "key-file", "", "store key file (default: secrets.key in the state directory)")
	c.Flags().StringVar(&o.keyEnv, "key-env", "", "environment variable holding the base64 store key")
}

func (o *secretOptions) keySource() secrets.KeySource {
	return secrets.KeySource{File: o.keyFile, Env: o.keyEnv}
}

// storeExists reports whether the state directory has a store file, so that
// read-only commands never create a key.
func (o *secretOptions) storeExists() (bool, error) {
	return secrets.StoreExists(o.stateDir)
}

func (o *secretOptions) open() (*secrets.Store, error) {
	log := slog.New(slog.NewTextHandler(o.stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("component", "secrets")
	return secrets.OpenStore(o.stateDir, o.keySource(), log)
}

func newSecretCmd(ro *rootOptions) *cobra.Command {
	c := &cobra.Command{
		Use:   "secret",
		Short: "Manage the encrypted secret store (values are write-only)",
		Long: `Manage the named secrets that sluice injects into requests (a rule's {NAME}).
Values are encrypted at rest (AES-256-GCM) and never printed: set reads the
value from stdin or a file, list shows names, scopes and update times only.
A {NAME} resolves against the sandbox's scope first, then the global scope.
A new value takes effect for the next request, without a reload.`,
		Example: `  printf %s "$OPENAI_API_KEY" | sluice secret set OPENAI_API_KEY
  sluice secret set GITHUB_TOKEN --sandbox ci-42 --from-file ./token
  sluice secret list --json
  sluice secret rm GITHUB_TOKEN --sandbox ci-42`,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE:         func(c *cobra.Command, _ []string) error { return c.Help() },
	}
	c.AddCommand(newSecretSetCmd(ro), newSecretListCmd(ro), newSecretRmCmd(ro))
	return c
}

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
	ok, err := o.storeExists()
	if err != nil {
		return fmt.Errorf("reading secret store: %w", err)
	}
	if ok {
		st, err := o.open()
		if err != nil {
			return err
		}
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
	ok, err := o.storeExists()
	if err != nil {
		return fmt.Errorf("reading secret store: %w", err)
	}
	if !ok {
		return fmt.Errorf("secret %s (%s): %w", name, scope, secrets.ErrNotFound)
	}
	st, err := o.open()
	if err != nil {
		return err
	}
	if err := st.Delete(scope, name); err != nil {
		return err
	}
	fmt.Fprintf(o.stdout, "secret %s removed (%s)\n", name, scope)
	return nil
}
