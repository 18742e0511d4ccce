package main

import (
	"context"
	"fmt"
	"log/slog"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"

	"github.com/sluice-dev/sluice/pkg/client"
	"github.com/sluice-dev/sluice/pkg/defaults"
	"github.com/sluice-dev/sluice/pkg/kube"
)

type kubeWatchOptions struct {
	node       string
	policyDirs []string
	api        string
	ca         string
	tokenFile  string
	logLevel   string
}

func newKubeWatchCmd(ro *rootOptions) *cobra.Command {
	o := &kubeWatchOptions{}
	cmd := &cobra.Command{
		Use:   "kube-watch --node NODE [--policy-dir DIR]...",
		Short: "Attach the pods of this Kubernetes node that carry sluice.dev/policy",
		Long: `Watch the pods scheduled on NODE through the Kubernetes API (the pod's
service account by default) and attach every pod annotated
sluice.dev/policy: NAME with the policy NAME from the policy directories (a
mounted ConfigMap), detaching it when it ends. One sandbox per pod: the pod's
cgroup, found through the container runtime's state. Sandboxes are named
k8s.NAMESPACE.POD (or k8s. and sluice.dev/name); on start, sandboxes with
that prefix that no pod on the node owns are detached.`,
		Example:      "  sluice kube-watch --node \"$NODE_NAME\" --policy-dir /etc/sluice/policies",
		Args:         cobra.NoArgs,
		SilenceUsage: true,
	}
	cf := addContainerFlags(cmd.Flags(), false)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if o.node == "" {
			return fmt.Errorf("--node is required (in a DaemonSet: the downward API's spec.nodeName)")
		}
		var lvl slog.Level
		if err := lvl.UnmarshalText([]byte(o.logLevel)); err != nil {
			return err
		}
		log := slog.New(slog.NewJSONHandler(ro.stderr, &slog.HandlerOptions{Level: lvl})).With("component", "kube-watch")
		var kc kubernetes.Interface
		var err error
		if o.api != "" {
			kc, err = kube.NewClientset(o.api, o.ca, o.tokenFile)
		} else {
			kc, err = kube.InClusterClientset()
		}
		if err != nil {
			return err
		}
		ap := kube.NewApplier(client.PodSandboxes{Client: client.New(ro.socket)}, cf.options(), o.policyDirs)
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		log.Info("watching pods", "node", o.node, "policy_dirs", o.policyDirs)
		return kube.Run(ctx, kc, o.node, ap, log)
	}
	f := cmd.Flags()
	f.StringVar(&o.node, "node", "", "this node's name (required)")
	f.StringArrayVar(&o.policyDirs, "policy-dir", []string{defaults.PolicyDir}, "directory of named policies (repeatable)")
	f.StringVar(&o.api, "kube-api", "", "API server URL (default: in-cluster)")
	f.StringVar(&o.ca, "kube-ca", "", "PEM roots for --kube-api")
	f.StringVar(&o.tokenFile, "kube-token-file", "", "bearer token file for --kube-api")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}
