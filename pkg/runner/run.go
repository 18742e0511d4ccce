package runner

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
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
// the command is killed or sluice gets SIGINT/SIGTERM.
func Run(ctx context.Context, o Options) (int, error) {
	log := o.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(o.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	if len(o.Command) == 0 {
		return 0, errors.New("no command given: sluice run --policy FILE -- CMD [ARGS...]")
	}
	// Nothing in the sandbox (nor another user) may read our memory,
	// which holds the secrets.
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return 0, fmt.Errorf("prctl(PR_SET_DUMPABLE): %w", err)
	}
	lookupEnv := o.LookupEnv
	if lookupEnv == nil {
		lookupEnv = os.LookupEnv
	}
	pol, err := policy.Load(o.PolicyFile)
	if err != nil {
		return 0, err
	}
	for _, w := range pol.Warnings {
		fmt.Fprintln(o.Stderr, "sluice:", w.String())
	}

	// Secrets: from the file and from sluice's own environment; the
	// variables used are scrubbed from the child's environment.
	static := map[string]string{}
	if o.SecretsFile != "" {
		m, err := secrets.ParseSecretsFile(o.SecretsFile)
		if err != nil {
			return 0, err
		}
		for k, v := range m {
			static[k] = v
		}
	}
	if len(o.SecretEnv) > 0 {
		m, err := secrets.FromEnv(o.SecretEnv, lookupEnv)
		if err != nil {
			return 0, err
		}
		for k, v := range m {
			static[k] = v
		}
	}
	providers := []secrets.Provider{secrets.Static(static)}
	dir := statedir.Dir(o.StateDir)
	if dir == "" {
		dir = statedir.Default
	}
	var store *secrets.Store // receives rotated oauth2 refresh tokens
	if ok, err := secrets.StoreExists(dir.Path()); err != nil {
		return 0, err
	} else if ok {
		if store, err = secrets.OpenStore(dir.Path(), secrets.KeySource{}, log.With("component", "secrets")); err != nil {
			return 0, err
		}
		providers = append(providers, store)
	}
	chain := secrets.NewChain(providers...)
	var signer ed25519.PrivateKey
	if hasCallbacks(pol) {
		if signer, err = secrets.LoadOrCreateSigningKey(dir.Path()); err != nil {
			return 0, err
		}
	}

	// Audit sinks.
	var sinks []audit.Sink
	summary := audit.NewSummary()
	sinks = append(sinks, summary)
	sink, err := audit.OpenSink(o.AuditPath, audit.SinkOptions{Stderr: o.Stderr})
	if err != nil {
		return 0, err
	}
	if sink != nil {
		sinks = append(sinks, sink)
	}
	alog := audit.NewLogger(log.With("component", "audit"), audit.LoggerOptions{}, sinks...)
	defer alog.Close()

	rt, err := daemon.NewRuntime(daemon.RuntimeOptions{
		DNSUpstreams: o.DNSUpstreams, DNSAllowLoopback: o.DNSAllowLoopback, UpstreamCAs: o.UpstreamCAs, PinDir: o.PinDir,
		Secrets: chain, Store: store, Signer: signer, Audit: alog,
	}, log)
	if err != nil {
		return 0, err
	}
	defer rt.Close()

	// The sandbox cgroup, below our own.
	self, err := cgroup.Self()
	if err != nil {
		return 0, err
	}
	cgName := "sluice-run-" + strconv.Itoa(os.Getpid())
	cgPath, err := cgroup.Create(self, cgName)
	if err != nil {
		return 0, fmt.Errorf("%w (sluice run needs write access to its own cgroup %s)", err, self)
	}
	defer func() {
		if err := cgroup.Remove(cgPath, 5*time.Second); err != nil {
			log.Error("removing sandbox cgroup", "err", err)
		}
	}()
	cgID, err := cgroup.ID(cgPath)
	if err != nil {
		return 0, err
	}
	name := o.Name
	if name == "" {
		name = cgName
	}

	ca, err := tlsca.New(name, 24*time.Hour)
	if err != nil {
		return 0, err
	}
	tmp, err := os.MkdirTemp("", "sluice-run-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return 0, err
	}
	sysRoots, _ := tlsca.SystemRootsPEM()
	bundle := filepath.Join(tmp, "ca-bundle.pem")
	if err := os.WriteFile(bundle, tlsca.Bundle(sysRoots, ca), 0o644); err != nil {
		return 0, fmt.Errorf("writing the CA bundle: %w", err)
	}
	caOnly := filepath.Join(tmp, "sluice-ca.pem")
	if err := os.WriteFile(caOnly, ca.CertPEM(), 0o644); err != nil {
		return 0, fmt.Errorf("writing the CA certificate: %w", err)
	}

	evCtx, stopEvents := context.WithCancel(ctx)
	defer stopEvents()
	go rt.KernelEvents(evCtx)

	sb, err := rt.Start(ctx, daemon.Spec{Name: name, CgroupPath: cgPath, CgroupID: cgID, Policy: pol, CA: ca, Labels: o.Labels})
	if err != nil {
		return 0, err
	}
	defer func() {
		if err := sb.Detach(); err != nil {
			log.Error("detaching sandbox", "err", err)
		}
	}()
	if err := writeRunRecord(name, cgPath, cgID); err == nil {
		defer removeRunRecord(cgID)
	}
	defer publishRun(sb, o.PolicyFile)() // runlist.go: `sluice list`

	// The command, below the sandbox init, started directly inside the
	// cgroup.
	cfg, err := sandboxConfig(ctx, o, pol, static, chain, name, tmp, bundle, caOnly, dir)
	if err != nil {
		return 0, err
	}
	defer cfg.release()
	cgFD, err := unix.Open(cgPath, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("opening cgroup: %w", err)
	}
	defer unix.Close(cgFD)
	cmd := sandbox.Command(cgFD, o.Stdin, o.Stdout, o.Stderr)
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	if err := sandbox.Start(cmd, &cfg.Config); err != nil {
		return 0, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var werr error
wait:
	for {
		select {
		case s := <-sigs:
			_ = cmd.Process.Signal(s)
		case <-ctx.Done():
			_ = cmd.Process.Kill()
		case werr = <-done:
			break wait
		}
	}
	// Whatever the command left running in the sandbox goes with it.
	_ = cgroup.Kill(cgPath)

	code := 0
	var ee *exec.ExitError
	switch {
	case werr == nil:
	case errors.As(werr, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		} else {
			code = ee.ExitCode()
		}
	default:
		return 0, werr
	}
	if o.Summary {
		fctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = alog.Flush(fctx)
		cancel()
		_ = summary.WriteSummary(o.Stderr)
	}
	return code, nil
}

func hasCallbacks(p *policy.Policy) bool {
	for _, r := range p.Rules {
		if r.Callback != nil {
			return true
		}
	}
	return false
}
