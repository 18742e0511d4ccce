package statedir

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/sluice-dev/sluice/pkg/defaults"
)

// Dir is a state directory: the daemon's (defaults.StateDir unless
// configured), which `sluice run`, `sluice secret` and `sluice blocked`
// also read.
type Dir string

// Default is the state directory of an installed sluice.
const Default Dir = defaults.StateDir

// Path is the directory itself: the secret store, its key and the callback
// signing key live in it (pkg/secrets names those files), the sandbox
// uid locks below it (pkg/sandbox).
func (d Dir) Path() string { return string(d) }

// Sandboxes holds one record, policy, CA and trust record per daemon
// sandbox.
func (d Dir) Sandboxes() string { return filepath.Join(string(d), "sandboxes") }

// Record is the sandbox's record (JSON).
func (d Dir) Record(name string) string { return d.sandboxFile(name, ".json") }

// Policy is the sandbox's policy text (opaque values replaced).
func (d Dir) Policy(name string) string { return d.sandboxFile(name, ".policy.yaml") }

// CA is the directory of the sandbox's CA.
func (d Dir) CA(name string) string { return d.sandboxFile(name, ".ca") }

// TrustRecord lists the container trust files the sandbox bundle is
// mounted over.
func (d Dir) TrustRecord(name string) string { return d.sandboxFile(name, trustRecordSuffix) }

// TrustBundle is the bundle (system roots and the sandbox CA) mounted over
// a container's trust files.
func (d Dir) TrustBundle(name string) string { return d.sandboxFile(name, ".trust.pem") }

// Fences is the record of the fences (JSON).
func (d Dir) Fences() string { return filepath.Join(string(d), "fences.json") }

const trustRecordSuffix = ".trust.json"

func (d Dir) sandboxFile(name, suffix string) string {
	return filepath.Join(d.Sandboxes(), name+suffix)
}

// Records lists the files of the sandbox records (Record) present.
func (d Dir) Records() []string {
	files, _ := filepath.Glob(filepath.Join(d.Sandboxes(), "*.json"))
	out := files[:0]
	for _, f := range files {
		if !strings.HasSuffix(f, trustRecordSuffix) {
			out = append(out, f)
		}
	}
	return out
}

// RemoveSandbox removes the sandbox's record, policy and CA (the trust
// files go when the bundle is unmounted).
func (d Dir) RemoveSandbox(name string) {
	os.Remove(d.Record(name))
	os.Remove(d.Policy(name))
	os.RemoveAll(d.CA(name))
}

// RunDir holds the records of live `sluice run` sandboxes, so that
// `sluice list` and `sluice blocked` can show and name them.
type RunDir string

// DefaultRunDir is the run directory of an installed sluice.
const DefaultRunDir RunDir = defaults.RunDir

// Path is the directory itself.
func (r RunDir) Path() string { return string(r) }

// Name is the run's name record: name, cgroup and pid, one a line.
func (r RunDir) Name(id uint64) string { return filepath.Join(string(r), strconv.FormatUint(id, 10)) }

// Info is the run's description as `sluice list` shows it (api.Info, JSON).
func (r RunDir) Info(id uint64) string { return r.Name(id) + ".json" }

// Infos lists the files of the run descriptions (Info) present.
func (r RunDir) Infos() []string {
	files, _ := filepath.Glob(filepath.Join(string(r), "*.json"))
	return files
}

// Names lists the cgroup ids of the name records (Name) present.
func (r RunDir) Names() []uint64 {
	entries, _ := os.ReadDir(string(r))
	var out []uint64
	for _, e := range entries {
		if id, err := strconv.ParseUint(e.Name(), 10, 64); err == nil {
			out = append(out, id)
		}
	}
	return out
}
