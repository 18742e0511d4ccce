package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/client"
	"github.com/sluice-dev/sluice/pkg/daemon"
	"github.com/sluice-dev/sluice/pkg/defaults"
)

type logsOptions struct {
	file     string
	follow   bool
	stream   bool
	json     bool
	packages bool
	all      bool
	poll     time.Duration
}

func newLogsCmd(ro *rootOptions) *cobra.Command {
	o := &logsOptions{}
	cmd := &cobra.Command{
		Use:   "logs [NAME]",
		Short: "Show the audit log: DNS queries, connections, requests and refusals",
		Long: `Show the audit log as a table: time, sandbox, pid and command of the process,
kind (dns, conn, http, kernel, callback), decision, rule, and what was reached.
NAME limits the output to one sandbox. --packages lists the packages each sandbox
downloaded (npm, PyPI, Go modules, crates, Maven), mirrors included.

The log is the daemon's JSON-lines audit file; its schema is pkg/audit/SCHEMA.md.
--json prints the events as they are stored, one per line.`,
		Example: `  sluice logs
  sluice logs agent-42 --follow
  sluice logs agent-42 --follow --stream   # live, from the daemon's API
  sluice logs agent-42 --packages --all
  sluice logs --file ./audit.jsonl --json | jq 'select(.decision == "deny")'`,
		Args:         cobra.MaximumNArgs(1),
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			name := ""
			if len(args) == 1 {
				name = args[0]
			}
			if o.stream && !o.follow {
				return errors.New("--stream goes with --follow")
			}
			if o.packages && o.follow {
				return errors.New("--packages lists what was fetched so far; it cannot be combined with --follow")
			}
			if o.file == "" && !o.stream {
				file, err := defaultAuditFile(daemonConfigFile)
				if err != nil {
					return err
				}
				o.file = file
			}
			return runLogs(cmd, ro, o, name)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.file, "file", "", "audit log to read (env "+defaults.EnvAuditFile+"; default: the audit file of the daemon's "+
		defaults.ConfigFile+", else "+defaults.AuditLog+")")
	f.BoolVarP(&o.follow, "follow", "f", false, "keep printing events as they are written, until interrupted")
	f.BoolVar(&o.stream, "stream", false, "with --follow: read the daemon's live event stream (--socket) instead of the file")
	f.BoolVar(&o.json, "json", false, "print JSON (events as JSON lines; with --packages a JSON array)")
	f.BoolVar(&o.packages, "packages", false, "list packages fetched: ecosystem, package, version")
	f.BoolVar(&o.all, "all", false, "also read the rotated files (FILE.N ... FILE.1, oldest first)")
	f.DurationVar(&o.poll, "poll", 250*time.Millisecond, "how often --follow checks the file")
	_ = f.MarkHidden("poll")
	return cmd
}

func runLogs(cmd *cobra.Command, ro *rootOptions, o *logsOptions, name string) error {
	keep := func(ev *audit.Event) bool { return name == "" || ev.Sandbox == name }

	if o.packages {
		var evs []audit.Event
		err := readLogs(o, func(ev audit.Event) error {
			if keep(&ev) {
				if _, _, _, ok := audit.PackageOf(&ev); ok {
					evs = append(evs, ev)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		pkgs := audit.Packages(evs)
		if o.json {
			enc := json.NewEncoder(ro.stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(pkgs)
		}
		return audit.FormatPackages(ro.stdout, pkgs)
	}

	show := func(ev audit.Event) error {
		if !keep(&ev) {
			return nil
		}
		if o.json {
			b, err := audit.MarshalLine(&ev)
			if err != nil {
				return err
			}
			_, err = ro.stdout.Write(b)
			return err
		}
		return audit.WriteTableRow(ro.stdout, &ev)
	}
	if !o.json {
		if err := audit.WriteTableHeader(ro.stdout); err != nil {
			return err
		}
	}
	if !o.follow {
		return readLogs(o, show)
	}
	if o.all {
		// History first, then the live file (Follow reads it from the start).
		rotated := audit.RotatedFiles(o.file)
		for i := len(rotated) - 1; i >= 1; i-- {
			if err := readLog(rotated[i], show); err != nil {
				return err
			}
		}
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.stream {
		// The daemon's live stream: every event of every sink, even
		// when the daemon writes no audit file.
		return client.New(ro.socket).Events(ctx, name, show)
	}
	return audit.Follow(ctx, o.file, o.poll, show)
}

// daemonConfigFile is the daemon configuration `sluice logs` takes its
// default file from (a variable for tests).
var daemonConfigFile = defaults.ConfigFile

// defaultAuditFile is the file `sluice logs` reads without --file: $SLUICE_AUDIT_FILE,
// else the audit file of the daemon configured by config (the file the packaged
// systemd unit passes with --config), else defaults.AuditLog when config cannot
// be read.
func defaultAuditFile(config string) (string, error) {
	if f := os.Getenv(defaults.EnvAuditFile); f != "" {
		return f, nil
	}
	if _, err := os.Stat(config); err != nil {
		return defaults.AuditLog, nil
	}
	cfg, err := daemon.LoadConfig(config)
	if err != nil {
		return defaults.AuditLog, nil
	}
	switch cfg.Audit {
	case "":
		return "", fmt.Errorf("the daemon's config %s writes no audit log: use --file", config)
	case "-":
		return "", fmt.Errorf("the daemon's config %s writes the audit log to standard output (the journal), not to a file: use --follow --stream, or --file", config)
	}
	return cfg.Audit, nil
}

// readLogs reads the audit file, preceded with --all by its rotated files,
// oldest first.
func readLogs(o *logsOptions, fn func(audit.Event) error) error {
	if o.all {
		rotated := audit.RotatedFiles(o.file)
		for i := len(rotated) - 1; i >= 1; i-- {
			if err := readLog(rotated[i], fn); err != nil {
				return err
			}
		}
	}
	return readLog(o.file, fn)
}

// readLog decodes the audit file, with a hint when it does not exist.
func readLog(path string, fn func(audit.Event) error) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("no audit log at %s: is the daemon running with an audit file? (use --file)", path)
	}
	if err != nil {
		return fmt.Errorf("reading audit log: %w", err)
	}
	defer f.Close()
	if err := audit.Decode(f, fn); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
