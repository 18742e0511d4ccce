package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/cgroup"
	"github.com/sluice-dev/sluice/pkg/policy"
	"github.com/sluice-dev/sluice/pkg/statedir"
	"github.com/sluice-dev/sluice/pkg/tlsca"
)

// FenceName is the pseudo-sandbox a fence's refusals are reported under
// (sluice blocked, the audit log).
const FenceName = "fenced"

// fencePolicy is a fence's policy: no rule, so the resolver answers
// NXDOMAIN to every name and the kernel refuses every connect with EPERM.
const fencePolicy = "version: 1\nrules: []\n"

// fenceRecord is what the state dir keeps of one fence (fences.json), so a
// restarted daemon keeps the resolver port the kernel redirects to, removes
// fences no longer configured, and `sluice blocked` names their refusals.
type fenceRecord struct {
	Fence     string `json:"fence"` // as configured, relative to the cgroup2 mount
	Cgroup    string `json:"cgroup"`
	CgroupID  uint64 `json:"cgroup_id"`
	ProxyPort uint16 `json:"proxy_port"`
	DNSPort   uint16 `json:"dns_port"`
}

func readFences(dir statedir.Dir) []fenceRecord {
	var out []fenceRecord
	if data, err := os.ReadFile(dir.Fences()); err == nil {
		_ = json.Unmarshal(data, &out)
	}
	return out
}

func writeFences(dir statedir.Dir, recs []fenceRecord) error {
	data, err := json.MarshalIndent(recs, "", "  ")
	if err != nil {
		return err
	}
	tmp := dir.Fences() + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("saving fences: %w", err)
	}
	return os.Rename(tmp, dir.Fences())
}

// addFenceNames names the fences recorded in dir FenceName in names.
func addFenceNames(dir statedir.Dir, names map[uint64]string) {
	for _, f := range readFences(dir) {
		names[f.CgroupID] = FenceName
	}
}

// checkFenceName validates a --fence value: a cgroup path relative to the
// cgroup2 mount, without "..", and not the root itself.
func checkFenceName(f string) error {
	c := filepath.Clean("/" + f)
	if f == "" || c == "/" {
		return fmt.Errorf("fence %q: name a cgroup below the cgroup2 mount, e.g. docker, system.slice or kubepods.slice", f)
	}
	for _, part := range strings.Split(f, "/") {
		if part == ".." {
			return fmt.Errorf("fence %q: \"..\" is not allowed; give the path relative to the cgroup2 mount", f)
		}
	}
	return nil
}

// startFences attaches a fence at every configured cgroup (created when
// missing, so containers started later land below it) and removes the
// fences an earlier daemon had that are no longer configured. A fence
// already pinned is updated in place, with no gap. An error leaves the
// kernel side as it is (closed) and stops the daemon.
func (d *Daemon) startFences(ctx context.Context) error {
	prev := map[uint64]fenceRecord{}
	for _, r := range readFences(d.dir) {
		prev[r.CgroupID] = r
	}
	if len(d.cfg.Fences) == 0 && len(prev) == 0 {
		return nil
	}
	root := d.cfg.CgroupRoot
	if root == "" {
		var err error
		if root, err = cgroup.Mount(); err != nil {
			return fmt.Errorf("fences: %w", err)
		}
	}
	pol, err := policy.Parse("fence", []byte(fencePolicy))
	if err != nil {
		return fmt.Errorf("fence policy: %w", err)
	}
	var recs []fenceRecord
	seen := map[uint64]bool{}
	for _, f := range d.cfg.Fences {
		if err := checkFenceName(f); err != nil {
			return err
		}
		path := filepath.Join(root, filepath.Clean("/"+f))
		if err := os.MkdirAll(path, 0o755); err != nil {
			return fmt.Errorf("fence %s: creating %s: %w", f, path, err)
		}
		if err := d.checkNotSelf(path); err != nil {
			return fmt.Errorf("fence %s: %w", f, err)
		}
		id, err := cgroup.ID(path)
		if err != nil {
			return fmt.Errorf("fence %s: %w", f, err)
		}
		if seen[id] {
			continue
		}
		seen[id] = true
		// The fence's proxy never intercepts (no rule allows anything);
		// its CA only satisfies the sandbox plumbing.
		ca, err := tlsca.New(FenceName, 24*time.Hour)
		if err != nil {
			return err
		}
		p := prev[id]
		sb, err := d.rt.Start(ctx, Spec{Name: FenceName, CgroupPath: path, CgroupID: id, Policy: pol, CA: ca, Fence: true,
			PreferProxyPort: p.ProxyPort, PreferDNSPort: p.DNSPort})
		if err != nil {
			return fmt.Errorf("fence %s: %w", f, err)
		}
		d.mu.Lock()
		d.fences = append(d.fences, sb)
		d.mu.Unlock()
		recs = append(recs, fenceRecord{Fence: f, Cgroup: path, CgroupID: id, ProxyPort: sb.ProxyPort(), DNSPort: sb.DNSPort()})
		d.log.Info("fence attached: cgroups created below it are refused all egress until attached", "fence", f, "cgroup", path)
		d.audit.Emit(audit.Event{Kind: audit.KindSandbox, Sandbox: FenceName, CgroupID: id, Decision: "fence", Reason: "fence " + f + " at " + path})
	}
	// Fences of an earlier daemon that are no longer configured. Sandboxes
	// below them keep their own links.
	for id, r := range prev {
		if seen[id] {
			continue
		}
		err := d.rt.Enforcer.Sandbox(r.Cgroup, r.CgroupID).Detach()
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			d.log.Error("removing a fence no longer configured", "fence", r.Fence, "err", err)
			recs = append(recs, r) // keep it recorded: it is still in the kernel
			continue
		}
		d.log.Warn("fence removed: it is no longer configured", "fence", r.Fence, "cgroup", r.Cgroup)
		d.audit.Emit(audit.Event{Kind: audit.KindSandbox, Sandbox: FenceName, CgroupID: id, Decision: "detach", Reason: "fence " + r.Fence + " is no longer configured"})
	}
	return writeFences(d.dir, recs)
}

// stopFences stops serving the fences' resolvers; the kernel side stays
// (pinned), so fenced cgroups stay refused while no daemon runs.
func (d *Daemon) stopFences() {
	d.mu.Lock()
	fences := d.fences
	d.fences = nil
	d.mu.Unlock()
	for _, f := range fences {
		f.Stop()
	}
}
