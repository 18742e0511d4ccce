package kube

import (
	"testing"

	"github.com/sluice-dev/sluice/pkg/containers"
)

// TestNewApplierContainerdNamespace: pods' containers are in containerd's
// k8s.io namespace unless --namespace names another.
func TestNewApplierContainerdNamespace(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ ns, want string }{{"", "k8s.io"}, {"other", "other"}} {
		ap := NewApplier(nil, containers.Options{ContainerdNamespace: c.ns, ContainerdState: "/run/x"}, []string{"/p"})
		cd, ok := ap.Resolvers[containers.RuntimeContainerd].(*containers.Containerd)
		if !ok || cd.Namespace != c.want || cd.StateDir != "/run/x" {
			t.Errorf("namespace %q: containerd resolver %+v, want namespace %q", c.ns, ap.Resolvers[containers.RuntimeContainerd], c.want)
		}
		for _, rt := range []string{containers.RuntimeDocker, containers.RuntimeCRIO} {
			if ap.Resolvers[rt] == nil {
				t.Errorf("no %s resolver", rt)
			}
		}
	}
}
