package client

import (
	"context"

	"github.com/sluice-dev/sluice/pkg/api"
)

// PodSandboxes adapts a Client to what the Kubernetes pod watch needs
// (kube.Daemon; `sluice kube-watch` assigns it to one, which checks it at
// compile time; importing pkg/kube here would pull the Kubernetes client
// into every command that talks to the daemon).
type PodSandboxes struct{ Client *Client }

// Attach attaches (or re-attaches) the sandbox name on cgroup, with the
// pod's labels.
func (d PodSandboxes) Attach(ctx context.Context, name, cgroup, policyFile string, policy []byte, labels map[string]string) error {
	_, err := d.Client.Attach(ctx, api.AttachRequest{Name: name, Cgroup: cgroup, PolicyFile: policyFile, Policy: string(policy), Labels: labels})
	return err
}

// Detach removes the sandbox name.
func (d PodSandboxes) Detach(ctx context.Context, name string) error {
	return d.Client.Detach(ctx, name)
}

// List names the attached sandboxes.
func (d PodSandboxes) List(ctx context.Context) ([]string, error) {
	infos, err := d.Client.List(ctx)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(infos))
	for _, i := range infos {
		names = append(names, i.Name)
	}
	return names, nil
}
