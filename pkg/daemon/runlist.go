package daemon

import (
	"encoding/json"
	"errors"
	"os"
	"sort"
	"syscall"
	"time"

	"github.com/sluice-dev/sluice/pkg/api"
)

// publishRun writes the Info of a live `sluice run` sandbox to
// the run directory (statedir.RunDir.Info) so that `sluice list` shows it (labels
// included); the returned function removes it. Failures only cost the
// listing.
func publishRun(sb *Sandbox, policyFile string) func() {
	p := sb.Policy()
	now := time.Now().UTC()
	info := api.Info{Name: sb.Name, Cgroup: sb.Cgroup, CgroupID: sb.ID, Policy: policyFile, Mode: p.Mode.String(), Rules: len(p.Rules),
		ProxyPort: sb.ProxyPort(), DNSPort: sb.DNSPort(), Created: now, Updated: now, Labels: sb.Labels(), RunPID: os.Getpid()}
	data, err := json.Marshal(info)
	if err != nil || os.MkdirAll(runs.Path(), 0o755) != nil {
		return func() {}
	}
	path := runs.Info(sb.ID)
	tmp := path + ".tmp"
	if os.WriteFile(tmp, data, 0o644) != nil || os.Rename(tmp, path) != nil {
		os.Remove(tmp)
		return func() {}
	}
	return func() { os.Remove(path) }
}

// ListRuns returns the live `sluice run` sandboxes, sorted by name; the
// records of runs whose process is gone are skipped.
func ListRuns() []api.Info {
	var out []api.Info
	for _, f := range runs.Infos() {
		var info api.Info
		data, err := os.ReadFile(f)
		if err != nil || json.Unmarshal(data, &info) != nil || info.RunPID <= 0 {
			continue
		}
		if err := syscall.Kill(info.RunPID, 0); err != nil && !errors.Is(err, syscall.EPERM) {
			continue // that sluice run ended without cleaning up
		}
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
