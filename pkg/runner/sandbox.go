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
// trust files it sees and what is hidden from it.
func (r *run) sandboxConfig(ctx context.Context) (*runSandbox, error) {
	id, err := sandbox.ResolveUser(r.o.User, r.dir.Path(), os.Getenv)
	if err != nil {
		return nil, err
	}
	rs := &runSandbox{id: id}
	home := id.Home
	if !id.WritableHome(home) {
		if home, err = id.MakeHome(r.trust.tmp); err != nil {
			id.Release()
			return nil, err
		}
	}
	names, values := r.secretNamesAndValues(ctx)
	// Our own /proc/PID/environ too: the caller may have handed us a
	// variable named like a secret or holding one.
	if err := sandbox.ScrubOwnEnviron(names, values); err != nil {
		id.Release()
		return nil, err
	}
	env := sandbox.BuildEnv(os.Environ(), sandbox.EnvOptions{
		SecretNames: names, SecretValues: values, Set: r.setEnv(), User: id, Home: home,
	})
	scratch := filepath.Join(r.trust.tmp, "init")
	if err := os.Mkdir(scratch, 0o700); err != nil {
		id.Release()
		return nil, fmt.Errorf("creating the sandbox scratch directory: %w", err)
	}
	cg2, _ := cgroup.Mount()
	// The command starts in our directory when it may enter it, else in
	// its home.
	cwd, _ := os.Getwd()
	if !id.CanEnter(cwd) {
		cwd = home
	}
	rs.Config = sandbox.Config{
		Argv: r.o.Command, Env: env, Dir: cwd,
		UID: id.UID, GID: id.GID, Groups: id.Groups,
		Binds:   sandbox.TrustBinds(r.trust.bundle, r.javaTrustStore()),
		Hide:    r.hidden(),
		Scratch: scratch,
		Cgroup2: cg2,
	}
	return rs, nil
}

// secretNamesAndValues lists the secrets, by name and by value, whatever
// supplied them: they are kept out of the command's environment.
func (r *run) secretNamesAndValues(ctx context.Context) (names, values []string) {
	names = append([]string(nil), r.o.SecretEnv...)
	for n := range r.static {
		names = append(names, n)
	}
	names = append(names, policySecretNames(r.pol)...)
	for _, v := range r.static {
		values = append(values, v)
	}
	for _, n := range policySecretNames(r.pol) {
		if v, err := r.chain.Lookup(ctx, r.name, n); err == nil {
			values = append(values, v)
		}
	}
	return names, values
}

// setEnv is what the command's environment sets: the CA variables, then
// the policy's env sorted by name.
func (r *run) setEnv() []string {
	set := sandbox.CAEnv(r.trust.bundle, r.trust.caOnly, sandbox.SystemCertDir(r.trust.tmp))
	keys := make([]string, 0, len(r.pol.Env))
	for k := range r.pol.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		set = append(set, k+"="+r.pol.Env[k])
	}
	return set
}

// javaTrustStore writes the bundle as a Java trust store and returns its
// path ("" when that failed): Java reads neither PEM bundles nor
// variables, and a store of the same certificates covers every cacerts.
func (r *run) javaTrustStore() string {
	pemData, err := os.ReadFile(r.trust.bundle)
	if err != nil {
		return ""
	}
	js, err := tlsca.JavaTrustStore(pemData)
	if err != nil {
		return ""
	}
	p := filepath.Join(r.trust.tmp, "java-cacerts")
	if os.WriteFile(p, js, 0o644) != nil {
		return ""
	}
	return p
}

// hidden lists what the command must not see: sluice's state, run and pin
// directories, and the files only sluice should touch (a root command,
// with DAC_OVERRIDE, could otherwise read the secrets file or rewrite the
// audit log).
func (r *run) hidden() []string {
	hide := []string{r.dir.Path(), statedir.Default.Path(), filepath.Dir(runs.Path()), enforcer.DefaultPinDir}
	if r.o.PinDir != "" {
		hide = append(hide, r.o.PinDir)
	}
	for _, f := range []string{r.o.SecretsFile, r.o.AuditPath} {
		if f != "" && f != "-" {
			if abs, err := filepath.Abs(f); err == nil {
				hide = append(hide, abs)
			}
		}
	}
	return hide
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
