package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/pkg/client"
	"github.com/sluice-dev/sluice/pkg/defaults"
	"github.com/sluice-dev/sluice/pkg/doctor"
)

type doctorOptions struct {
	json      bool
	strict    bool
	bpffs     string
	mountinfo string
	skip      []string
}

func newDoctorCmd(ro *rootOptions) *cobra.Command {
	o := &doctorOptions{}
	cmd := &cobra.Command{
		Use:   "doctor [--json] [--strict]",
		Short: "Check that this host can run sluice, and print a fix for each problem",
		Long: `Check the kernel version (5.8 or newer), the bpf syscall, cgroup v2 and its
mount mode (unified, or hybrid with cgroup2 beside v1 hierarchies), bpffs,
the capabilities sluice needs (CAP_BPF, CAP_SYS_ADMIN, CAP_NET_ADMIN) and the
daemon's control socket. Each failed check prints the fix.

Exit status: 0 when every check passes (a daemon that is not running is a
warning), 1 when a check fails (or warns, with --strict).`,

		Example: `  sudo sluice doctor
  sudo sluice doctor --json | jq '.results[] | select(.status != "ok")'`,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, c := range o.skip {
				if !slices.Contains(doctor.Checks, c) {
					return fmt.Errorf("--skip %q: expect one of %s", c, strings.Join(quoted(doctor.Checks), ", "))
				}
			}
			cl := client.New(ro.socket)
			rep := doctor.Run(cmd.Context(), doctor.Env{
				MountInfo: o.mountinfo,
				BPFFS:     o.bpffs,
				Socket:    ro.socket,
				Daemon: func(ctx context.Context) error {
					_, err := cl.List(ctx)
					return err
				},
				Strict: o.strict,
				Skip:   o.skip,
			})
			if o.json {
				enc := json.NewEncoder(ro.stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(rep); err != nil {
					return err
				}
			} else {
				printDoctor(ro, rep)
			}
			if !rep.OK {
				failed := 0
				for _, r := range rep.Results {
					if r.Status == doctor.Fail || (o.strict && r.Status == doctor.Warn) {
						failed++
					}
				}
				return &exitError{code: 1, err: fmt.Errorf("%d check(s) failed", failed)}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.json, "json", false, "print JSON")
	f.BoolVar(&o.strict, "strict", false, "fail on warnings too (a daemon that is not running)")
	f.StringVar(&o.bpffs, "bpffs", defaults.BPFFS, "where bpffs must be mounted")
	f.StringArrayVar(&o.skip, "skip", nil, "skip a check: "+strings.Join(quoted(doctor.Checks), ", ")+" (repeatable)")
	f.StringVar(&o.mountinfo, "mountinfo", "/proc/self/mountinfo", "mount table to inspect")
	_ = f.MarkHidden("mountinfo")
	return cmd
}

func quoted(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = fmt.Sprintf("%q", s)
	}
	return out
}

func printDoctor(ro *rootOptions, rep doctor.Report) {
	w := tabwriter.NewWriter(ro.stdout, 0, 4, 2, ' ', 0)
	for _, r := range rep.Results {
		mark := map[doctor.Status]string{doctor.OK: "ok", doctor.Warn: "WARN", doctor.Fail: "FAIL"}[r.Status]
		fmt.Fprintf(w, "%s\t%s\t%s\n", mark, r.Check, r.Detail)
		if r.Fix != "" && r.Status != doctor.OK {
			fmt.Fprintf(w, "\t\tfix: %s\n", r.Fix)
		}
	}
	_ = w.Flush()
}
