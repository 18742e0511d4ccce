package daemon

import (
	"encoding/json"
	"os"

	"github.com/sluice-dev/sluice/pkg/containers"
	"github.com/sluice-dev/sluice/pkg/tlsca"
)

// maxTrustNamespaces bounds the mount namespaces (containers of a pod) one
// attach mounts the bundle into.
const maxTrustNamespaces = 64

// trustMount is one mount namespace the sandbox bundle was mounted into.
type trustMount struct {
	PID   int      `json:"pid"`
	MntNS uint64   `json:"mnt_ns"`
	Paths []string `json:"paths"`
}

// trustContainer puts the sandbox bundle (system roots and the sandbox CA)
// over the trust files of the container(s) being attached: the mount
// namespace of pid (when given) or of every process in the cgroup at cg, as
// long as it is not the daemon's own (a host process keeps the host's trust
// store). rootfs is the container's root in that namespace when a runtime
// hook attaches before pivot_root ("" is "/"). A failure is logged, not
// returned: enforcement does not depend on it, and an interception the
// client cannot verify fails closed.
func (d *Daemon) trustContainer(name string, pid int, cg, rootfs string, ca *tlsca.CA) {
	targets := map[uint64]int{}
	if pid > 0 {
		self, _ := containers.MountNS(os.Getpid())
		if ns, err := containers.MountNS(pid); err == nil && ns != self {
			targets[ns] = pid
		}
	} else {
		targets = containers.ForeignMountNamespaces(cg, maxTrustNamespaces)
	}
	if len(targets) == 0 {
		return
	}
	sysRoots, _ := tlsca.SystemRootsPEM()
	bundle := d.dir.TrustBundle(name)
	if err := os.WriteFile(bundle, tlsca.Bundle(sysRoots, ca), 0o644); err != nil {
		d.log.Warn("writing the container trust bundle", "sandbox", name, "err", err)
		return
	}
	var recs []trustMount
	for ns, p := range targets {
		paths, err := containers.MountTrust(p, rootfs, bundle)
		if err != nil {
			d.log.Warn("could not put the sandbox CA into the container's trust store", "sandbox", name, "pid", p, "err", err)
			continue
		}
		if len(paths) == 0 {
			d.log.Info("the container has none of the known trust files", "sandbox", name, "pid", p)
			continue
		}
		d.log.Info("sandbox CA mounted over the container's trust files", "sandbox", name, "pid", p, "paths", paths)
		recs = append(recs, trustMount{PID: p, MntNS: ns, Paths: paths})
	}
	if data, err := json.Marshal(recs); err == nil {
		_ = os.WriteFile(d.dir.TrustRecord(name), data, 0o600)
	}
}

// untrust removes the bundle mounts of a sandbox from the mount namespaces
// that still exist (a container that ended took them along).
func (d *Daemon) untrust(name string) {
	data, err := os.ReadFile(d.dir.TrustRecord(name))
	if err != nil {
		return
	}
	var recs []trustMount
	_ = json.Unmarshal(data, &recs)
	for _, r := range recs {
		if ns, err := containers.MountNS(r.PID); err != nil || ns != r.MntNS {
			continue
		}
		// In a pre-pivot_root attach the recorded paths are below the
		// rootfs; after pivot_root they are not found and left to the
		// namespace's end.
		if err := containers.UnmountTrust(r.PID, r.Paths); err != nil {
			d.log.Warn("removing the sandbox CA from the container's trust files", "sandbox", name, "err", err)
		}
	}
	os.Remove(d.dir.TrustRecord(name))
	os.Remove(d.dir.TrustBundle(name))
}
