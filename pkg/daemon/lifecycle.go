package daemon

import (
	"context"
	"time"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/cgroup"
)

// cgroupPollPeriod bounds how long a sandbox whose cgroup was removed (its
// container exited, its pod was deleted) stays attached: one stat per
// sandbox per period.
const cgroupPollPeriod = time.Second

// DecisionCgroupGone is the audit decision of a sandbox detached by the
// daemon itself because its cgroup was removed.
const DecisionCgroupGone = "cgroup_gone"

// watchCgroups detaches sandboxes whose cgroup disappeared until ctx is
// done.
func (d *Daemon) watchCgroups(ctx context.Context) {
	t := time.NewTicker(cgroupPollPeriod)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.reapGone()
		}
	}
}

// cgroupAlive reports whether the cgroup at path still exists and is the
// one attached (a cgroup re-created under the same path has another id).
func cgroupAlive(path string, id uint64) bool {
	got, err := cgroup.ID(path)
	return err == nil && got == id
}

// reapGone detaches sandboxes whose cgroup was removed (the container ended
// without a detach): links unpinned, registration, allowlist and counters
// removed, state deleted, and one audit event saying why.
func (d *Daemon) reapGone() {
	d.mu.Lock()
	recs := make([]record, 0, len(d.sandboxes))
	for _, m := range d.sandboxes {
		recs = append(recs, m.rec)
	}
	d.mu.Unlock()
	for _, r := range recs {
		if cgroupAlive(r.Cgroup, r.CgroupID) {
			continue
		}
		d.mu.Lock()
		m, ok := d.sandboxes[r.Name]
		if ok && m.rec.CgroupID == r.CgroupID {
			d.emitGone(r.Name, r.CgroupID, r.Cgroup)
			if err := d.detachLocked(r.Name, m); err != nil {
				d.log.Warn("detaching a sandbox whose cgroup is gone", "sandbox", r.Name, "err", err)
			}
		}
		d.mu.Unlock()
	}
}

func (d *Daemon) emitGone(name string, id uint64, path string) {
	d.log.Info("sandbox cgroup is gone; detaching", "sandbox", name, "cgroup", path)
	d.audit.Emit(audit.Event{Kind: audit.KindSandbox, Sandbox: name, CgroupID: id, Decision: DecisionCgroupGone,
		Reason: "cgroup " + path + " was removed (its container or pod ended); sandbox detached"})
}
