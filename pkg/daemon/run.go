package daemon

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
	"strings"
	"syscall"
	"time"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/cgroup"
	"github.com/sluice-dev/sluice/pkg/enforcer"
	"github.com/sluice-dev/sluice/pkg/policy"
	"github.com/sluice-dev/sluice/pkg/secrets"
	"github.com/sluice-dev/sluice/pkg/tlsca"
	"golang.org/x/sys/unix"
)

// RunOptions configures a one-shot sandbox (`sluice run`).
type RunOptions struct {
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
	AuditPath        string   // "" none, "-" standard error, else a file
	PinDir           string
	StateDir         string // secret store and callback key when present (default /var/lib/sluice)
	Summary          bool   // print the allowed/denied summary at exit
	// UID and GID run the command as that user (when UID >= 0). A command
	// running as root can leave its cgroup: give an unprivileged user.
	UID, GID int

	// Labels (--label k=v, CheckLabels) go on every audit event and in
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
func Run(ctx context.Context, o RunOptions) (int, error) {
	log := o.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(o.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	if len(o.Command) == 0 {
		return 0, errors.New("no command given: sluice run --policy FILE -- CMD [ARGS...]")
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
		m, err := secrets.FromEnv(o.SecretEnv, os.LookupEnv)
		if err != nil {
			return 0, err
		}
		for k, v := range m {
			static[k] = v
		}
	}
	providers := []secrets.Provider{secrets.Static(static)}
	stateDir := o.StateDir
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	var store *secrets.Store // receives rotated oauth2 refresh tokens
	if ok, err := secrets.StoreExists(stateDir); err != nil {
		return 0, err
	} else if ok {
		if store, err = secrets.OpenStore(stateDir, secrets.KeySource{}, log.With("component", "secrets")); err != nil {
			return 0, err
		}
		providers = append(providers, store)
	}
	chain := secrets.NewChain(providers...)
	var signer ed25519.PrivateKey
	if hasCallbacks(pol) {
		if signer, err = secrets.LoadOrCreateSigningKey(stateDir); err != nil {
			return 0, err
		}
	}

	// Audit sinks.
	var sinks []audit.Sink
	summary := audit.NewSummary()
	sinks = append(sinks, summary)
	switch o.AuditPath {
	case "":
	case "-":
		sinks = append(sinks, audit.NewWriterSink("stderr", o.Stderr))
	default:
		fs, err := audit.NewFileSink(o.AuditPath, audit.FileSinkOptions{})
		if err != nil {
			return 0, err
		}
		sinks = append(sinks, fs)
	}
	alog := audit.NewLogger(log.With("component", "audit"), audit.LoggerOptions{}, sinks...)
	defer alog.Close()

	resolver, px, err := newResolverAndProxy(o.DNSUpstreams, o.DNSAllowLoopback, o.UpstreamCAs, log)
	if err != nil {
		return 0, err
	}
	defer px.Close()

	enf, err := enforcer.Open(enforcer.Config{PinDir: o.PinDir}, log.With("component", "enforcer"))
	if err != nil {
		return 0, err
	}
	defer enf.Close()

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

	rt := &Runtime{Log: log, Enforcer: enf, Resolver: resolver, Proxy: px, Secrets: chain,
		Callbacks: secrets.NewCallbacks(signer, nil, log.With("component", "callback")), Audit: alog}
	if err := rt.setCredentials(chain, store, o.UpstreamCAs); err != nil {
		return 0, err
	}
	evCtx, stopEvents := context.WithCancel(ctx)
	defer stopEvents()
	go rt.KernelEvents(evCtx)

	sb, err := rt.Start(ctx, Spec{Name: name, CgroupPath: cgPath, CgroupID: cgID, Policy: pol, CA: ca, Labels: o.Labels})
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

	// The command, started directly inside the cgroup.
	env := secrets.ScrubEnv(os.Environ(), o.SecretEnv)
	env = append(env, caEnv(bundle, caOnly)...)
	for k, v := range pol.Env {
		env = append(env, k+"="+v)
	}
	cgFD, err := unix.Open(cgPath, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("opening cgroup: %w", err)
	}
	defer unix.Close(cgFD)
	cmd := exec.Command(o.Command[0], o.Command[1:]...)
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = o.Stdin, o.Stdout, o.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgFD, Pdeathsig: syscall.SIGKILL}
	if o.UID >= 0 {
		gid := o.GID
		if gid < 0 {
			gid = o.UID
		}
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(o.UID), Gid: uint32(gid)}
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("starting %s: %w", o.Command[0], err)
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

// caEnv points the common TLS clients at the bundle of system roots plus
// the sandbox CA.
func caEnv(bundle, caOnly string) []string {
	vars := []string{
		"SSL_CERT_FILE=" + bundle,
		"CURL_CA_BUNDLE=" + bundle,
		"REQUESTS_CA_BUNDLE=" + bundle,
		"GIT_SSL_CAINFO=" + bundle,
		"PIP_CERT=" + bundle,
		"NODE_EXTRA_CA_CERTS=" + caOnly,
		"CARGO_HTTP_CAINFO=" + bundle,
		"AWS_CA_BUNDLE=" + bundle,
		"DENO_CERT=" + bundle,
		"NPM_CONFIG_CAFILE=" + bundle,
		"SLUICE_CA_FILE=" + caOnly,
	}
	return vars
}

// RunDir holds the records of live `sluice run` sandboxes, so that
// `sluice blocked` can name them.
const RunDir = "/run/sluice/run"

func writeRunRecord(name, cg string, id uint64) error {
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return err
	}
	rec := strings.Join([]string{name, cg, strconv.Itoa(os.Getpid())}, "\n") + "\n"
	return os.WriteFile(filepath.Join(RunDir, strconv.FormatUint(id, 10)), []byte(rec), 0o644)
}

func removeRunRecord(id uint64) {
	os.Remove(filepath.Join(RunDir, strconv.FormatUint(id, 10)))
}

// RunNames maps the cgroup ids of live `sluice run` sandboxes to their names.
func RunNames() map[uint64]string {
	out := map[uint64]string{}
	entries, _ := os.ReadDir(RunDir)
	for _, e := range entries {
		id, err := strconv.ParseUint(e.Name(), 10, 64)
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join(RunDir, e.Name()))
		if err != nil {
			continue
		}
		name, _, _ := strings.Cut(string(data), "\n")
		out[id] = name
	}
	return out
}

// DefaultStateDir is the daemon's state directory.
const DefaultStateDir = "/var/lib/sluice"

// SandboxNames maps cgroup ids to sandbox names, from the records of live
// `sluice run` sandboxes and the daemon's state directory.
func SandboxNames(stateDir string) map[uint64]string {
	names := RunNames()
	for id, n := range stateNames(stateDir) {
		names[id] = n
	}
	return names
}

func hasCallbacks(p *policy.Policy) bool {
	for _, r := range p.Rules {
		if r.Callback != nil {
			return true
		}
	}
	return false
}
