package runner

import (
	"encoding/json"
	"errors"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sluice-dev/sluice/pkg/api"
	"github.com/sluice-dev/sluice/pkg/daemon"
	"github.com/sluice-dev/sluice/pkg/statedir"
)

// publishRun writes the Info of a live `sluice run` sandbox to
// the run directory (statedir.RunDir.Info) so that `sluice list` shows it (labels
// included); the returned function removes it. Failures only cost the
// listing.
func publishRun(sb *daemon.Sandbox, policyFile string) func() {
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

// List returns the live `sluice run` sandboxes, sorted by name; the
// records of runs whose process is gone are skipped.
func List() []api.Info {
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

// runs holds the records of live `sluice run` sandboxes, so that
// `sluice list` and `sluice blocked` can show and name them.
const runs = statedir.DefaultRunDir

func writeRunRecord(name, cg string, id uint64) error {
	if err := os.MkdirAll(runs.Path(), 0o755); err != nil {
		return err
	}
	rec := strings.Join([]string{name, cg, strconv.Itoa(os.Getpid())}, "\n") + "\n"
	return os.WriteFile(runs.Name(id), []byte(rec), 0o644)
}

func removeRunRecord(id uint64) {
	os.Remove(runs.Name(id))
}

// Names maps the cgroup ids of live `sluice run` sandboxes to their names.
func Names() map[uint64]string {
	out := map[uint64]string{}
	for _, id := range runs.Names() {
		data, err := os.ReadFile(runs.Name(id))
		if err != nil {
			continue
		}
		name, _, _ := strings.Cut(string(data), "\n")
		out[id] = name
	}
	return out
}
