package blocked

import (
	"sort"
	"strconv"
	"time"

	"github.com/sluice-dev/sluice/pkg/daemon"
	"github.com/sluice-dev/sluice/pkg/enforcer"
	"github.com/sluice-dev/sluice/pkg/runner"
	"github.com/sluice-dev/sluice/pkg/statedir"
)

// Row is one refusal counter: a sandbox, a destination and a reason (the
// JSON of `sluice blocked --json`).
type Row struct {
	Sandbox  string    `json:"sandbox"`
	CgroupID uint64    `json:"cgroup_id"`
	Dst      string    `json:"dst"`
	Port     uint16    `json:"port"`
	Proto    string    `json:"proto"`
	Reason   string    `json:"reason"`
	Count    uint64    `json:"count"`
	LastSeen time.Time `json:"last_seen"`
}

// Read reads the refusal counters pinned in pinDir, those of the sandbox
// name only when name is set, sorted by sandbox and then newest first. A
// sandbox no record names is "cgroup:ID".
func Read(pinDir string, dir statedir.Dir, name string) ([]Row, error) {
	rows, err := enforcer.ReadBlocked(pinDir)
	if err != nil {
		return nil, err
	}
	names := sandboxNames(dir)
	out := []Row{}
	for _, r := range rows {
		n := names[r.Sandbox]
		if n == "" {
			n = "cgroup:" + strconv.FormatUint(r.Sandbox, 10)
		}
		if name != "" && n != name {
			continue
		}
		v := enforcer.Render(r.Reason, r.Proto, r.Dst)
		out = append(out, Row{Sandbox: n, CgroupID: r.Sandbox, Dst: v.Addr, Port: v.Port,
			Proto: v.Proto, Reason: v.Reason, Count: r.Count, LastSeen: r.LastSeen.UTC().Truncate(time.Second)})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Sandbox != out[j].Sandbox {
			return out[i].Sandbox < out[j].Sandbox
		}
		return out[i].LastSeen.After(out[j].LastSeen)
	})
	return out, nil
}

// sandboxNames maps cgroup ids to sandbox names, from the records of live
// `sluice run` sandboxes and the daemon's state directory dir.
func sandboxNames(dir statedir.Dir) map[uint64]string {
	names := runner.Names()
	for id, n := range daemon.StateNames(dir) {
		names[id] = n
	}
	return names
}
