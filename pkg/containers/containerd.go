package containers

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Containerd resolves containers from the task state containerd's runtime
// v2 shims keep: STATE/NAMESPACE/ID/init.pid, where STATE is
// /run/containerd/io.containerd.runtime.v2.task by default. The shim
// writes init.pid once the task's init process exists (before it is
// started) and the directory goes away when the task is deleted, so the
// file is present exactly while the container has a process.
//
// This reads the state rather than calling containerd's gRPC API: it needs
// no client library, no socket permissions beyond root on the host's /run,
// and it sees tasks of every client (ctr, nerdctl, the CRI plugin, Docker's
// "moby" namespace).
type Containerd struct {
	// StateDir is the runtime v2 task state root.
	StateDir string
	// Namespace limits the search to one namespace; "" searches all.
	Namespace string
}

// Resolve finds the task whose id is id or starts with id (a unique
// prefix of at least 4 characters), in any namespace.
func (c *Containerd) Resolve(ctx context.Context, id string) (Target, error) {
	if id == "" || strings.ContainsAny(id, "/\\") || id == "." || id == ".." {
		return Target{}, fmt.Errorf("invalid container id %q", id)
	}
	nss, err := c.namespaces()
	if err != nil {
		return Target{}, err
	}
	type hit struct{ ns, id string }
	var exact, prefix []hit
	for _, ns := range nss {
		entries, err := os.ReadDir(filepath.Join(c.StateDir, ns))
		if err != nil {
			continue
		}
		for _, e := range entries {
			if !e.IsDir() {
				continue
			}
			switch {
			case e.Name() == id:
				exact = append(exact, hit{ns, e.Name()})
			case len(id) >= 4 && strings.HasPrefix(e.Name(), id):
				prefix = append(prefix, hit{ns, e.Name()})
			}
		}
	}
	hits := exact
	if len(hits) == 0 {
		hits = prefix
	}
	switch {
	case len(hits) == 0:
		where := "any namespace"
		if c.Namespace != "" {
			where = "namespace " + c.Namespace
		}
		return Target{}, fmt.Errorf("containerd: no task %q in %s under %s (is the container running? --containerd-state selects another state directory)", id, where, c.StateDir)
	case len(hits) > 1:
		var names []string
		for _, h := range hits {
			names = append(names, h.ns+"/"+h.id)
		}
		return Target{}, fmt.Errorf("containerd: %q is ambiguous: %s; give the full id or --namespace", id, strings.Join(names, ", "))
	}
	h := hits[0]
	pidFile := filepath.Join(c.StateDir, h.ns, h.id, "init.pid")
	data, err := os.ReadFile(pidFile)
	if errors.Is(err, fs.ErrNotExist) {
		return Target{}, fmt.Errorf("containerd: task %s/%s has no init process yet (no %s)", h.ns, h.id, pidFile)
	}
	if err != nil {
		return Target{}, fmt.Errorf("containerd: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return Target{}, fmt.Errorf("containerd: %s does not hold a pid", pidFile)
	}
	t := Target{Runtime: RuntimeContainerd, ID: h.id, Namespace: h.ns}
	if err := fillProcess(&t, pid); err != nil {
		return Target{}, err
	}
	return t, nil
}

func (c *Containerd) namespaces() ([]string, error) {
	if c.Namespace != "" {
		return []string{c.Namespace}, nil
	}
	entries, err := os.ReadDir(c.StateDir)
	if err != nil {
		return nil, fmt.Errorf("containerd: reading task state: %w (is containerd running with the runtime v2 shim? --containerd-state selects another directory)", err)
	}
	var nss []string
	for _, e := range entries {
		if e.IsDir() {
			nss = append(nss, e.Name())
		}
	}
	sort.Strings(nss)
	return nss, nil
}
