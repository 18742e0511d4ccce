package main

import (
	"fmt"
	"log/slog"

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

// openExisting opens the store when the state directory has one, and
// returns nil (no error) when it has none, so that commands that only read
// or remove never create a key.
func (o *secretOptions) openExisting() (*secrets.Store, error) {
	ok, err := secrets.StoreExists(o.stateDir)
	if err != nil {
		return nil, fmt.Errorf("reading secret store: %w", err)
	}
	if !ok {
		return nil, nil
	}
	return o.open()
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
