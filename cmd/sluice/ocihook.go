package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/pkg/api"
	"github.com/sluice-dev/sluice/pkg/client"
	"github.com/sluice-dev/sluice/pkg/containers"
	"github.com/sluice-dev/sluice/pkg/defaults"
)

type ociHookOptions struct {
	policyDirs []string
	allowPaths bool
	timeout    time.Duration
}

func newOCIHookCmd(ro *rootOptions) *cobra.Command {
	o := &ociHookOptions{}
	cmd := &cobra.Command{
		Use:   "oci-hook [--policy-dir DIR]...",
		Short: "OCI runtime hook: attach containers that carry the sluice.dev/policy annotation",
		Long: `Run by an OCI runtime (runc, crun, youki) as a createRuntime hook, with the
container's state JSON on standard input. A container with the annotation
sluice.dev/policy is attached through the daemon before its process runs:
the policy is a name looked up in the policy directories (NAME, NAME.yaml,
NAME.yml) or an absolute path inside them (--allow-paths: anywhere). The
sandbox is named by sluice.dev/name, or "oci-" and the container id. The
container's other annotations (those valid as labels) become the sandbox's
labels: on its audit events and in its credential callback requests.

Run as a poststop hook too, it detaches the sandbox when the container stops.
A container without the annotation is left alone, so the hook can be
installed for every container. When the attach fails the hook exits 1 and
the runtime refuses to start the container (fail closed).`,
		Example: `  # /usr/share/containers/oci/hooks.d/sluice.json (CRI-O, Podman), or in
  # config.json: "hooks": {"createRuntime": [{"path": "/usr/bin/sluice",
  #   "args": ["sluice", "oci-hook"]}], "poststop": [...same...]}
  docker run --runtime runc --annotation sluice.dev/policy=agent ...
  echo '{"ociVersion":"1.2.0","id":"c1","status":"created","pid":4242,"bundle":"/b",
    "annotations":{"sluice.dev/policy":"agent"}}' | sluice oci-hook`,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := containers.ParseOCIState(ro.stdin)
			if err != nil {
				return err
			}
			plan, err := containers.PlanHook(st, containers.HookConfig{PolicyDirs: o.policyDirs, AllowPaths: o.allowPaths})
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
			defer cancel()
			cl := client.New(ro.socket)
			switch plan.Op {
			case containers.HookAttach:
				info, err := cl.Attach(ctx, api.AttachRequest{Name: plan.Name, PID: plan.PID,
					PolicyFile: plan.PolicyFile, Policy: string(plan.Policy), Labels: plan.Labels, Rootfs: plan.Rootfs})
				if err != nil {
					return fmt.Errorf("attaching container %s: %w", st.ID, err)
				}
				fmt.Fprintf(ro.stdout, "attached %s (container %s, pid %d, cgroup %s)\n", info.Name, st.ID, plan.PID, info.Cgroup)
			case containers.HookDetach:
				if err := cl.Detach(ctx, plan.Name); err != nil {
					return fmt.Errorf("detaching container %s: %w", st.ID, err)
				}
				fmt.Fprintf(ro.stdout, "detached %s (container %s)\n", plan.Name, st.ID)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&o.policyDirs, "policy-dir", []string{defaults.PolicyDir}, "directory of named policies (repeatable)")
	f.BoolVar(&o.allowPaths, "allow-paths", false, "let the annotation name a policy file outside the policy directories")
	f.DurationVar(&o.timeout, "timeout", 10*time.Second, "give up on the daemon after this long")
	return cmd
}
