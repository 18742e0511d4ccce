package runner

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/cgroup"
	"github.com/sluice-dev/sluice/pkg/daemon"
	"github.com/sluice-dev/sluice/pkg/policy"
	"github.com/sluice-dev/sluice/pkg/sandbox"
	"github.com/sluice-dev/sluice/pkg/secrets"
	"github.com/sluice-dev/sluice/pkg/statedir"
	"github.com/sluice-dev/sluice/pkg/tlsca"
)

// Options configures a one-shot sandbox (`sluice run`).
type Options struct {
	PolicyFile   string
	Name         string
	Command      []string
	DNSUpstreams []string // empty: from /etc/resolv.conf
	// DNSAllowLoopback lets loopback addresses in upstream answers through
	// (off by default: DNS rebinding onto the host's loopback).
	DNSAllowLoopback bool
	UpstreamCAs      []string // PEM files trusted for upstream TLS besides the system roots
	SecretsFile      string   // NAME=value lines, mode 0600 or stricter
	SecretEnv        []string // variables of sluice's own environment used as secrets
	AuditPath        string   // audit.OpenSink: "" none, "-" standard error, else a file
	PinDir           string
	StateDir         string // secret store, callback key and uid locks (default /var/lib/sluice)
	Summary          bool   // print the allowed/denied summary at exit
	// User is --user: "" runs the command as the user behind sudo, else as
	// a per-sandbox uid (sandbox.ResolveUser); "root", a name, UID or
	// UID:GID. Whoever it is, the sandbox boundary applies.
	User string
	// LookupEnv reads the --secret-env variables (sandbox.HideSecretEnv's
	// lookup, since they are no longer in the environment); nil:
	// os.LookupEnv.
	LookupEnv func(string) (string, bool)

	// Labels (--label k=v, daemon.CheckLabels) go on every audit event and in
	// each credential callback request of the sandbox.
	Labels map[string]string

	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Log            *slog.Logger
}

// Run runs one command in a fresh sandbox cgroup below sluice's own and
// returns the command's exit status. Everything it creates (cgroup, links,
// registration, listeners, CA bundle) is removed before it returns, also when
// the command is killed or sluice gets SIGINT/SIGTERM/SIGHUP/SIGQUIT: those
// are handled from the moment Run starts, before it creates anything. One
// that arrives while the sandbox is being set up stops the setup (the
// command never starts) and Run returns 128+N; later ones are passed on to
// the command.
func Run(ctx context.Context, o Options) (int, error) {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	// Deferred first, so it runs last: a signal during cleanup cannot cut
	// it short.
	defer signal.Stop(sigs)
	r := &run{o: o, log: o.Log}
	defer r.cleanup()
	setupCtx, stopWatch := cancelOnSignal(ctx, sigs)
	err := r.setup(setupCtx)
	if s := stopWatch(); s != 0 {
		return 128 + int(s), nil
	}
	if err != nil {
		return 0, err
	}
	code, err := r.runCommand(ctx, sigs)
	if err != nil {
		return 0, err
	}
	if o.Summary {
		r.writeSummary()
	}
	return code, nil
}

// testHookSetup, when set by a test, is called at the start of the setup
// (signals already handled) and after each of its steps, with the setup's
// context.
var testHookSetup func(ctx context.Context, step string)

// setup prepares the sandbox, step by step, and stops early once ctx is
// done (a signal).
func (r *run) setup(ctx context.Context) error {
	hook := func(string) {}
	if testHookSetup != nil {
		hook = func(step string) { testHookSetup(ctx, step) }
	}
	hook("start")
	if err := r.prepare(); err != nil {
		return err
	}
	hook("prepare")
	for _, step := range []struct {
		name string
		do   func(context.Context) error
	}{
		{"loadSecrets", r.loadSecrets}, {"openAudit", r.openAudit}, {"openRuntime", r.openRuntime},
		{"createCgroup", r.createCgroup}, {"writeTrustFiles", r.writeTrustFiles}, {"startSandbox", r.startSandbox},
	} {
		if err := context.Cause(ctx); err != nil {
			return err
		}
		if err := step.do(ctx); err != nil {
			return err
		}
		hook(step.name)
	}
	return context.Cause(ctx)
}

// cancelOnSignal returns a context that is cancelled when one of sigs
// arrives, until stop is called. stop (to be called once) returns the
// signal that cancelled it, or 0; later signals stay in sigs.
func cancelOnSignal(ctx context.Context, sigs <-chan os.Signal) (_ context.Context, stop func() syscall.Signal) {
	ctx, cancel := context.WithCancelCause(ctx)
	quit, done := make(chan struct{}), make(chan struct{})
	var got syscall.Signal
	go func() {
		defer close(done)
		select {
		case s := <-sigs:
			got, _ = s.(syscall.Signal)
			cancel(fmt.Errorf("interrupted by %v before the command started", s))
		case <-quit:
		}
	}()
	return ctx, func() syscall.Signal {
		close(quit)
		<-done
		return got
	}
}

// run is one `sluice run`: what each step of Run makes and the next ones
// use.
type run struct {
	o   Options
	log *slog.Logger
	pol *policy.Policy
	dir statedir.Dir

	static map[string]string // secrets from --secrets-file and --secret-env
	chain  *secrets.Chain
	store  *secrets.Store // nil without a secret store
	signer ed25519.PrivateKey

	summary *audit.Summary
	alog    *audit.Logger
	rt      *daemon.Runtime

	name   string
	cgPath string
	cgID   uint64
	ca     *tlsca.CA
	trust  trustFiles
	sb     *daemon.Sandbox

	// undo holds what to release when Run returns, in the order of
	// creation; cleanup runs it backwards.
	undo []func()
}

// trustFiles are the run's temporary directory (mode 0755, removed at
// exit) and the certificate files in it the command trusts.
type trustFiles struct {
	tmp    string
	bundle string // the system roots and the sandbox CA
	caOnly string // the sandbox CA alone
}

func (r *run) onExit(f func()) { r.undo = append(r.undo, f) }

func (r *run) cleanup() {
	for i := len(r.undo) - 1; i >= 0; i-- {
		r.undo[i]()
	}
}

// prepare checks the options, makes the process undumpable and loads the
// policy.
func (r *run) prepare() error {
	if r.log == nil {
		r.log = slog.New(slog.NewTextHandler(r.o.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	if len(r.o.Command) == 0 {
		return errors.New("no command given: sluice run --policy FILE -- CMD [ARGS...]")
	}
	// Nothing in the sandbox (nor another user) may read our memory,
	// which holds the secrets.
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_DUMPABLE): %w", err)
	}
	pol, err := policy.Load(r.o.PolicyFile)
	if err != nil {
		return err
	}
	for _, w := range pol.Warnings {
		fmt.Fprintln(r.o.Stderr, "sluice:", w.String())
	}
	r.pol = pol
	r.dir = statedir.Dir(r.o.StateDir)
	if r.dir == "" {
		r.dir = statedir.Default
	}
	return nil
}

// loadSecrets reads the secrets from the file and from sluice's own
// environment (the variables used are scrubbed from the child's
// environment), opens the secret store when there is one and, when the
// policy has callbacks, the signing key.
func (r *run) loadSecrets(context.Context) error {
	lookupEnv := r.o.LookupEnv
	if lookupEnv == nil {
		lookupEnv = os.LookupEnv
	}
	r.static = map[string]string{}
	if r.o.SecretsFile != "" {
		m, err := secrets.ParseSecretsFile(r.o.SecretsFile)
		if err != nil {
			return err
		}
		maps.Copy(r.static, m)
	}
	if len(r.o.SecretEnv) > 0 {
		m, err := secrets.FromEnv(r.o.SecretEnv, lookupEnv)
		if err != nil {
			return err
		}
		maps.Copy(r.static, m)
	}
	providers := []secrets.Provider{secrets.Static(r.static)}
	// The store receives rotated oauth2 refresh tokens.
	if ok, err := secrets.StoreExists(r.dir.Path()); err != nil {
		return err
	} else if ok {
		if r.store, err = secrets.OpenStore(r.dir.Path(), secrets.KeySource{}, r.log.With("component", "secrets")); err != nil {
			return err
		}
		providers = append(providers, r.store)
	}
	r.chain = secrets.NewChain(providers...)
	if hasCallbacks(r.pol) {
		var err error
		if r.signer, err = secrets.LoadOrCreateSigningKey(r.dir.Path()); err != nil {
			return err
		}
	}
	return nil
}

// openAudit opens the audit sinks: the exit summary and --audit.
func (r *run) openAudit(context.Context) error {
	r.summary = audit.NewSummary()
	sinks := []audit.Sink{r.summary}
	sink, err := audit.OpenSink(r.o.AuditPath, audit.SinkOptions{Stderr: r.o.Stderr})
	if err != nil {
		return err
	}
	if sink != nil {
		sinks = append(sinks, sink)
	}
	r.alog = audit.NewLogger(r.log.With("component", "audit"), audit.LoggerOptions{}, sinks...)
	r.onExit(func() { r.alog.Close() })
	return nil
}

// openRuntime opens the resolver, the proxy and the eBPF programs, for
// this sandbox alone.
func (r *run) openRuntime(context.Context) error {
	rt, err := daemon.NewRuntime(daemon.RuntimeOptions{
		DNSUpstreams: r.o.DNSUpstreams, DNSAllowLoopback: r.o.DNSAllowLoopback, UpstreamCAs: r.o.UpstreamCAs, PinDir: r.o.PinDir,
		Secrets: r.chain, Store: r.store, Signer: r.signer, Audit: r.alog,
	}, r.log)
	if err != nil {
		return err
	}
	r.rt = rt
	r.onExit(rt.Close)
	return nil
}

// createCgroup creates the sandbox cgroup, below our own, and names the
// sandbox after it unless --name was given.
func (r *run) createCgroup(context.Context) error {
	self, err := cgroup.Self()
	if err != nil {
		return err
	}
	cgName := "sluice-run-" + strconv.Itoa(os.Getpid())
	cgPath, err := cgroup.Create(self, cgName)
	if err != nil {
		return fmt.Errorf("%w (sluice run needs write access to its own cgroup %s)", err, self)
	}
	r.cgPath = cgPath
	r.onExit(func() {
		if err := cgroup.Remove(cgPath, 5*time.Second); err != nil {
			r.log.Error("removing sandbox cgroup", "err", err)
		}
	})
	if r.cgID, err = cgroup.ID(cgPath); err != nil {
		return err
	}
	r.name = r.o.Name
	if r.name == "" {
		r.name = cgName
	}
	return nil
}

// writeTrustFiles creates the sandbox CA and writes the files the command
// trusts into a temporary directory.
func (r *run) writeTrustFiles(context.Context) error {
	ca, err := tlsca.New(r.name, 24*time.Hour)
	if err != nil {
		return err
	}
	r.ca = ca
	tmp, err := os.MkdirTemp("", "sluice-run-")
	if err != nil {
		return err
	}
	r.onExit(func() { os.RemoveAll(tmp) })
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	r.trust = trustFiles{tmp: tmp, bundle: filepath.Join(tmp, "ca-bundle.pem"), caOnly: filepath.Join(tmp, "sluice-ca.pem")}
	sysRoots, _ := tlsca.SystemRootsPEM()
	if err := os.WriteFile(r.trust.bundle, tlsca.Bundle(sysRoots, ca), 0o644); err != nil {
		return fmt.Errorf("writing the CA bundle: %w", err)
	}
	if err := os.WriteFile(r.trust.caOnly, ca.CertPEM(), 0o644); err != nil {
		return fmt.Errorf("writing the CA certificate: %w", err)
	}
	return nil
}

// startSandbox reads the kernel's events, registers the cgroup, serves
// the sandbox's resolver and proxy, and writes the run records.
func (r *run) startSandbox(ctx context.Context) error {
	evCtx, stopEvents := context.WithCancel(ctx)
	r.onExit(stopEvents)
	go r.rt.KernelEvents(evCtx)

	sb, err := r.rt.Start(ctx, daemon.Spec{Name: r.name, CgroupPath: r.cgPath, CgroupID: r.cgID, Policy: r.pol, CA: r.ca, Labels: r.o.Labels})
	if err != nil {
		return err
	}
	r.sb = sb
	r.onExit(func() {
		if err := sb.Detach(); err != nil {
			r.log.Error("detaching sandbox", "err", err)
		}
	})
	if err := writeRunRecord(r.name, r.cgPath, r.cgID); err == nil {
		r.onExit(func() { removeRunRecord(r.cgID) })
	}
	r.onExit(publishRun(sb, r.o.PolicyFile)) // records.go: `sluice list`
	return nil
}

// runCommand starts the command below the sandbox init, directly inside
// the cgroup, passes our signals (sigs) on to it, and returns its exit
// status once it ended; whatever it left in the cgroup is killed.
func (r *run) runCommand(ctx context.Context, sigs <-chan os.Signal) (int, error) {
	cfg, err := r.sandboxConfig(ctx)
	if err != nil {
		return 0, err
	}
	r.onExit(cfg.release)
	cgFD, err := unix.Open(r.cgPath, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("opening cgroup: %w", err)
	}
	r.onExit(func() { unix.Close(cgFD) })
	cmd := sandbox.Command(cgFD, r.o.Stdin, r.o.Stdout, r.o.Stderr)
	if err := sandbox.Start(cmd, &cfg.Config); err != nil {
		return 0, err
	}
	werr := wait(ctx, cmd, sigs)
	// Whatever the command left running in the sandbox goes with it.
	_ = cgroup.Kill(r.cgPath)
	return exitCode(werr)
}

// wait waits for cmd, passing sigs on to it and killing it when ctx is
// done.
func wait(ctx context.Context, cmd *exec.Cmd, sigs <-chan os.Signal) error {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case s := <-sigs:
			_ = cmd.Process.Signal(s)
		case <-ctx.Done():
			_ = cmd.Process.Kill()
		case err := <-done:
			return err
		}
	}
}

// exitCode is the exit status of a command that ended with err, as a
// shell reports it (128+N for signal N).
func exitCode(err error) (int, error) {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ee.ExitCode(), nil
	default:
		return 0, err
	}
}

// writeSummary prints the allowed/denied summary once the audit events
// are out.
func (r *run) writeSummary() {
	fctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_ = r.alog.Flush(fctx)
	cancel()
	_ = r.summary.WriteSummary(r.o.Stderr)
}

func hasCallbacks(p *policy.Policy) bool {
	for _, r := range p.Rules {
		if r.Callback != nil {
			return true
		}
	}
	return false
}
