package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os/signal"
	"syscall"

	"github.com/sluice-dev/sluice/pkg/daemon"
	"github.com/sluice-dev/sluice/pkg/defaults"
	"github.com/spf13/cobra"
)

type daemonOptions struct {
	config       string
	stateDir     string
	dnsUpstreams []string
	dnsLoopback  bool
	upstreamCAs  []string
	pinDir       string
	audit        string
	metrics      string
	logLevel     string
	pprof        string
	fences       []string
}

func newDaemonCmd(ro *rootOptions) *cobra.Command {
	o := &daemonOptions{}
	cmd := &cobra.Command{
		Use:   "daemon [--config FILE]",
		Short: "Run the long-running host agent (control API on a Unix socket)",
		Long: `Run the host agent. Sandboxes are attached with 'sluice attach' and stay
enforced in the kernel (pinned eBPF links) when the daemon stops: their
connections then fail, and work again when the daemon is back, with no
re-attach. Flags override the config file.`,
		Example: `  sluice daemon --config /etc/sluice/config.yaml
  # a private daemon for tests
  sluice daemon --socket /tmp/s.sock --state-dir /tmp/state --dns-upstream 127.0.0.1:5353
  # every Docker container is refused all egress until 'sluice attach --container'
  sluice daemon --fence docker`,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := daemon.LoadConfig(o.config)
			if err != nil {
				return err
			}
			f := cmd.Flags()
			if f.Changed("socket") || cfg.Socket == "" {
				cfg.Socket = ro.socket
			}
			if f.Changed("state-dir") {
				cfg.StateDir = o.stateDir
			}
			if f.Changed("dns-upstream") {
				cfg.DNSUpstreams = o.dnsUpstreams
			}
			if f.Changed("dns-allow-loopback") {
				cfg.DNSAllowLoopback = o.dnsLoopback
			}
			if f.Changed("upstream-ca") {
				cfg.UpstreamCAs = o.upstreamCAs
			}
			if f.Changed("pin-dir") {
				cfg.PinDir = o.pinDir
			}
			if f.Changed("audit") {
				cfg.Audit = o.audit
			}
			if f.Changed("metrics") {
				cfg.Metrics = o.metrics
			}
			if f.Changed("fence") {
				cfg.Fences = o.fences
			}
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(o.logLevel)); err != nil {
				return err
			}
			log := slog.New(slog.NewJSONHandler(ro.stderr, &slog.HandlerOptions{Level: lvl}))
			d, err := daemon.New(cfg, log)
			if err != nil {
				return err
			}
			if o.pprof != "" {
				if err := servePprof(o.pprof, log); err != nil {
					return err
				}
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return d.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.config, "config", "", "config file (YAML; the package installs "+defaults.ConfigFile+")")
	f.StringVar(&o.stateDir, "state-dir", defaults.StateDir, "state directory")
	f.StringArrayVar(&o.dnsUpstreams, "dns-upstream", nil, "upstream DNS HOST:PORT (repeatable)")
	f.BoolVar(&o.dnsLoopback, "dns-allow-loopback", false, "let upstream DNS answers point at loopback addresses (off: DNS rebinding protection)")
	f.StringArrayVar(&o.upstreamCAs, "upstream-ca", nil, "extra PEM roots for upstream TLS (repeatable)")
	f.StringVar(&o.pinDir, "pin-dir", "", "bpffs directory for pinned maps and links (default "+defaults.PinDir+")")
	f.StringVar(&o.audit, "audit", "", "audit sink: a JSON-lines file, or - for standard error")
	f.StringVar(&o.metrics, "metrics", "", "serve Prometheus /metrics on this address (e.g. 127.0.0.1:9090)")
	f.StringArrayVar(&o.fences, "fence", nil, "cgroup relative to the cgroup2 mount (docker, system.slice, kubepods.slice) whose new child cgroups are refused all egress until attached (repeatable)")
	f.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.StringVar(&o.pprof, "pprof", "", "serve Go pprof profiles on this loopback address (debugging)")
	_ = f.MarkHidden("pprof")
	return cmd
}

// servePprof serves net/http/pprof on a loopback address.
func servePprof(addr string, log *slog.Logger) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--pprof: %w", err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("--pprof %s: only loopback addresses are allowed", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--pprof: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	go func() { log.Error("pprof server stopped", "err", http.Serve(ln, mux)) }()
	return nil
}
