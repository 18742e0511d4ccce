package runner

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/sluice-dev/sluice/pkg/cgroup"
	"github.com/sluice-dev/sluice/pkg/enforcer"
	"github.com/sluice-dev/sluice/pkg/policy"
	"github.com/sluice-dev/sluice/pkg/sandbox"
	"github.com/sluice-dev/sluice/pkg/secrets"
	"github.com/sluice-dev/sluice/pkg/statedir"
	"github.com/sluice-dev/sluice/pkg/tlsca"
)

// runSandbox is the sandbox init's configuration plus what must be
// released when the run ends (the uid lock).
type runSandbox struct {
	sandbox.Config
	id *sandbox.Identity
}

func (r *runSandbox) release() { r.id.Release() }

// sandboxConfig decides who the command runs as, its environment, the
// trust files it sees and what is hidden from it. tmp is the run's
// temporary directory (mode 0755, removed at exit) holding bundle and
// caOnly.
func sandboxConfig(ctx context.Context, o Options, pol *policy.Policy, static map[string]string,
	chain *secrets.Chain, name, tmp, bundle, caOnly string, dir statedir.Dir) (*runSandbox, error) {
	id, err := sandbox.ResolveUser(o.User, dir.Path(), os.Getenv)
	if err != nil {
		return nil, err
	}
	rs := &runSandbox{id: id}
	home := id.Home
	if !id.WritableHome(home) {
		if home, err = id.MakeHome(tmp); err != nil {
			id.Release()
			return nil, err
		}
	}

	// Secrets, by name and by value, whatever supplied them.
	names := append([]string(nil), o.SecretEnv...)
	for n := range static {
		names = append(names, n)
	}
	names = append(names, policySecretNames(pol)...)
	var values []string
	for _, v := range static {
		values = append(values, v)
	}
	for _, n := range policySecretNames(pol) {
		if v, err := chain.Lookup(ctx, name, n); err == nil {
			values = append(values, v)
		}
	}

	// Our own /proc/PID/environ too: the caller may have handed us a
	// variable named like a secret or holding one.
	if err := sandbox.ScrubOwnEnviron(names, values); err != nil {
		id.Release()
		return nil, err
	}

	set := sandbox.CAEnv(bundle, caOnly, sandbox.SystemCertDir(tmp))
	keys := make([]string, 0, len(pol.Env))
	for k := range pol.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		set = append(set, k+"="+pol.Env[k])
	}
	env := sandbox.BuildEnv(os.Environ(), sandbox.EnvOptions{
		SecretNames: names, SecretValues: values, Set: set, User: id, Home: home,
	})

	// Java reads neither PEM bundles nor variables: a store of the same
	// certificates covers every cacerts.
	javaStore := ""
	if pemData, err := os.ReadFile(bundle); err == nil {
		if js, err := tlsca.JavaTrustStore(pemData); err == nil {
			p := filepath.Join(tmp, "java-cacerts")
			if err := os.WriteFile(p, js, 0o644); err == nil {
				javaStore = p
			}
		}
	}
	scratch := filepath.Join(tmp, "init")
	if err := os.Mkdir(scratch, 0o700); err != nil {
		id.Release()
		return nil, fmt.Errorf("creating the sandbox scratch directory: %w", err)
	}
	cg2, _ := cgroup.Mount()
	hide := []string{dir.Path(), statedir.Default.Path(), filepath.Dir(runs.Path()), enforcer.DefaultPinDir}
	if o.PinDir != "" {
		hide = append(hide, o.PinDir)
	}
	// Files only sluice should touch: a root command (DAC_OVERRIDE) could
	// otherwise read the secrets file or rewrite the audit log.
	for _, f := range []string{o.SecretsFile, o.AuditPath} {
		if f != "" && f != "-" {
			if abs, err := filepath.Abs(f); err == nil {
				hide = append(hide, abs)
			}
		}
	}
	// The command starts in our directory when it may enter it, else in
	// its home.
	cwd, _ := os.Getwd()
	if !id.CanEnter(cwd) {
		cwd = home
	}
	rs.Config = sandbox.Config{
		Argv: o.Command, Env: env, Dir: cwd,
		UID: id.UID, GID: id.GID, Groups: id.Groups,
		Binds:   sandbox.TrustBinds(bundle, javaStore),
		Hide:    hide,
		Scratch: scratch,
		Cgroup2: cg2,
	}
	return rs, nil
}

// policySecretNames lists the secret names the policy's headers reference.
func policySecretNames(p *policy.Policy) []string {
	var out []string
	for _, r := range p.Rules {
		for _, h := range r.Headers {
			out = append(out, h.Secrets...)
		}
	}
	return out
}
