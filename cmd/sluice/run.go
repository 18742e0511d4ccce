package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/pkg/daemon"
	"github.com/sluice-dev/sluice/pkg/defaults"
	"github.com/sluice-dev/sluice/pkg/runner"
	"github.com/sluice-dev/sluice/pkg/sandbox"
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
CMD's environment. Everything sluice run creates is removed when it exits.

CMD runs unprivileged: as the user behind sudo, else as a fresh uid from
2100000000-2100065535 (--user picks another, root included). Whoever it is,
CMD has its own PID, mount and cgroup namespaces, no CAP_SYS_ADMIN,
CAP_NET_ADMIN, CAP_BPF, CAP_PERFMON, CAP_NET_RAW, CAP_SYS_PTRACE or
CAP_SYS_MODULE, no_new_privs, and a seccomp filter that allows only unix,
inet, inet6 and netlink sockets. The sandbox CA is bind-mounted over the
system's trust files (PEM bundles and Java's cacerts), so clients trust
intercepted hosts without flags.`,
		Example: `  # curl an allowed API; the proxy adds Authorization from $DEMO_TOKEN
  DEMO_TOKEN=s3cr3t sluice run --policy testdata/policies/demo.yaml \
      --secret-env DEMO_TOKEN -- curl https://allowed.test/

  # installs inside the sandbox, still contained
  sluice run --policy p.yaml --user root -- apt-get install -y jq

  # tests: a loopback upstream resolver and a private CA for upstream TLS
  sluice run --policy p.yaml --dns-upstream 127.0.0.1:5353 \
      --upstream-ca ca.pem --audit - -- sh -c 'getent hosts allowed.test'`,
		Args:         cobra.MinimumNArgs(1),
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			// Before anything else: the --secret-env variables leave
			// sluice's own environment (a re-exec), their values kept.
			lookupEnv, err := sandbox.HideSecretEnv(o.secretEnv)
			if err != nil {
				return err
			}
			labels, err := daemon.ParseLabels(o.labels)
			if err != nil {
				return err
			}
			code, err := runner.Run(context.Background(), runner.Options{
				User:             o.user,
				LookupEnv:        lookupEnv,
				StateDir:         o.stateDir,
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
	f.StringVar(&o.pinDir, "pin-dir", "", "bpffs directory for pinned maps and links (default "+defaults.PinDir+")")
	f.StringVar(&o.stateDir, "state-dir", defaults.StateDir, "secret store (used when present), callback signing key and sandbox uid locks")
	f.StringVar(&o.user, "user", "", "run CMD as USER, UID[:GID] or root (default: the user behind sudo, else a fresh uid from 2100000000-2100065535)")
	f.BoolVar(&o.noSummary, "no-summary", false, "do not print the allowed/denied summary at exit")
	f.StringArrayVar(&o.labels, "label", nil, "label KEY=VALUE of the sandbox (repeatable): shown by sluice list, on audit events and in callback requests")
	_ = cmd.MarkFlagRequired("policy")
	return cmd
}
