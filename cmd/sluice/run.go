package main

import (
	"context"
	"fmt"
	"os/user"
	"strconv"
	"strings"

	"github.com/sluice-dev/sluice/pkg/daemon"
	"github.com/spf13/cobra"
)

type runOptions struct {
	policy       string
	name         string
	audit        string
	dnsUpstreams []string
	dnsLoopback  bool
	upstreamCAs  []string
	secretsFile  string
	secretEnv    []string
	pinDir       string
	noSummary    bool
	user         string
	stateDir     string
	labels       []string
}

func init() { register(newRunCmd) }

func newRunCmd(ro *rootOptions) *cobra.Command {
	o := &runOptions{}
	cmd := &cobra.Command{
		Use:   "run --policy FILE [flags] -- CMD [ARGS...]",
		Short: "Run one command in a fresh sandbox with egress enforced",
		Long: `Run CMD in a new cgroup below sluice's own, with the eBPF programs attached,
a resolver and a proxy serving it, and exit with CMD's status.

Default deny: anything the policy does not name is refused (EPERM in the
kernel, NXDOMAIN at DNS, HTTP 403 at the proxy). Secrets named with
--secret-env or --secrets-file are injected by the proxy and never reach
CMD's environment. Everything sluice run creates is removed when it exits.`,
		Example: `  # curl an allowed API; the proxy adds Authorization from $DEMO_TOKEN
  DEMO_TOKEN=s3cr3t sluice run --policy testdata/policies/demo.yaml \
      --secret-env DEMO_TOKEN -- curl https://allowed.test/

  # tests: a loopback upstream resolver and a private CA for upstream TLS
  sluice run --policy p.yaml --dns-upstream 127.0.0.1:5353 \
      --upstream-ca ca.pem --audit - -- sh -c 'getent hosts allowed.test'`,
		Args:         cobra.MinimumNArgs(1),
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			uid, gid, err := parseUser(o.user)
			if err != nil {
				return err
			}
			labels, err := daemon.ParseLabels(o.labels)
			if err != nil {
				return err
			}
			code, err := daemon.Run(context.Background(), daemon.RunOptions{
				UID:              uid,
				GID:              gid,
				PolicyFile:       o.policy,
				Name:             o.name,
				Command:          args,
				DNSUpstreams:     o.dnsUpstreams,
				DNSAllowLoopback: o.dnsLoopback,
				UpstreamCAs:      o.upstreamCAs,
				SecretsFile:      o.secretsFile,
				SecretEnv:        o.secretEnv,
				AuditPath:        o.audit,
				PinDir:           o.pinDir,
				Summary:          !o.noSummary,
				Labels:           labels,
				Stdin:            ro.stdin,
				Stdout:           ro.stdout,
				Stderr:           ro.stderr,
			})
			if err != nil {
				return err
			}
			if code != 0 {
				return &exitError{code: code}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.policy, "policy", "", "policy file (required)")
	f.StringVar(&o.name, "name", "", "sandbox name (default sluice-run-PID)")
	f.StringVar(&o.audit, "audit", "", "write audit events as JSON lines to FILE, or - for standard error")
	f.StringArrayVar(&o.dnsUpstreams, "dns-upstream", nil, "upstream DNS server HOST:PORT (repeatable; default from /etc/resolv.conf)")
	f.BoolVar(&o.dnsLoopback, "dns-allow-loopback", false, "let upstream DNS answers point at loopback addresses (tests, local services; off: DNS rebinding protection)")
	f.StringArrayVar(&o.upstreamCAs, "upstream-ca", nil, "PEM file of extra roots trusted for upstream TLS (repeatable)")
	f.StringVar(&o.secretsFile, "secrets-file", "", "NAME=value lines (file mode 0600 or stricter)")
	f.StringArrayVar(&o.secretEnv, "secret-env", nil, "use $NAME of sluice's environment as secret NAME (repeatable); removed from CMD's environment")
	f.StringVar(&o.pinDir, "pin-dir", "", "bpffs directory for pinned maps and links (default /sys/fs/bpf/sluice/v1)")
	f.StringVar(&o.stateDir, "state-dir", "/var/lib/sluice", "secret store (used when present) and callback signing key")
	f.StringVar(&o.user, "user", "", "run CMD as USER or UID[:GID] (recommended: a root CMD can leave its cgroup)")
	f.BoolVar(&o.noSummary, "no-summary", false, "do not print the allowed/denied summary at exit")
	f.StringArrayVar(&o.labels, "label", nil, "label KEY=VALUE of the sandbox (repeatable): shown by sluice list, on audit events and in callback requests")
	_ = cmd.MarkFlagRequired("policy")
	return cmd
}

// parseUser turns "name", "uid" or "uid:gid" into ids; "" means unchanged
// (-1).
func parseUser(s string) (int, int, error) {
	if s == "" {
		return -1, -1, nil
	}
	us, gs, hasG := strings.Cut(s, ":")
	uid, err := strconv.Atoi(us)
	gid := -1
	if err != nil {
		u, lerr := user.Lookup(us)
		if lerr != nil {
			return 0, 0, fmt.Errorf("--user %q: %w", s, lerr)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
	}
	if hasG {
		if gid, err = strconv.Atoi(gs); err != nil {
			return 0, 0, fmt.Errorf("--user %q: group must be numeric", s)
		}
	}
	return uid, gid, nil
}
