package containers

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// CRIO resolves CRI-O (and Podman) containers from the containers/storage
// run root both keep their per-container state in:
// RUNROOT/DRIVER-containers/ID/userdata/pidfile, where RUNROOT is
// /run/containers/storage by default and DRIVER the storage driver
// (overlay, vfs, ...). conmon writes the pidfile once the container's init
// process exists (before it runs), and the directory goes away with the
// container, like containerd's task state.
type CRIO struct {
	// RunRoot is the containers/storage run root.
	RunRoot string
}

// Resolve finds the container whose id is id or starts with id (a unique
// prefix of at least 4 characters).
func (c *CRIO) Resolve(ctx context.Context, id string) (Target, error) {
	if id == "" || strings.ContainsAny(id, "/\\") || id == "." || id == ".." {
		return Target{}, fmt.Errorf("invalid container id %q", id)
	}
	drivers, err := filepath.Glob(filepath.Join(c.RunRoot, "*-containers"))
	if err != nil || len(drivers) == 0 {
		return Target{}, fmt.Errorf("cri-o: no container state under %s (is CRI-O or Podman running? --crio-root selects another run root)", c.RunRoot)
	}
	var exact, prefix []string
	for _, d := range drivers {
		entries, err := os.ReadDir(d)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if !e.IsDir() {
				continue
			}
			switch {
			case e.Name() == id:
				exact = append(exact, filepath.Join(d, e.Name()))
			case len(id) >= 4 && strings.HasPrefix(e.Name(), id):
				prefix = append(prefix, filepath.Join(d, e.Name()))
			}
		}
	}
	hits := exact
	if len(hits) == 0 {
		hits = prefix
	}
	switch {
	case len(hits) == 0:
		return Target{}, fmt.Errorf("cri-o: no container %q under %s (is it running?)", id, c.RunRoot)
	case len(hits) > 1:
		var names []string
		for _, h := range hits {
			names = append(names, filepath.Base(h))
		}
		return Target{}, fmt.Errorf("cri-o: %q is ambiguous: %s; give the full id", id, strings.Join(names, ", "))
	}
	pidFile := filepath.Join(hits[0], "userdata", "pidfile")
	data, err := os.ReadFile(pidFile)
	if errors.Is(err, fs.ErrNotExist) {
		return Target{}, fmt.Errorf("cri-o: container %s has no init process yet (no %s)", filepath.Base(hits[0]), pidFile)
	}
	if err != nil {
		return Target{}, fmt.Errorf("cri-o: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return Target{}, fmt.Errorf("cri-o: %s does not hold a pid", pidFile)
	}
	t := Target{Runtime: RuntimeCRIO, ID: filepath.Base(hits[0])}
	if err := fillProcess(&t, pid); err != nil {
		return Target{}, err
	}
	return t, nil
}
