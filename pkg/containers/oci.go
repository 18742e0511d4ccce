package containers

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/sluice-dev/sluice/pkg/audit"
)

// Annotations a container opts in with.
const (
	// AnnotationPolicy names the policy: an absolute path to a policy file,
	// or a name looked up in the hook's policy directories (NAME, NAME.yaml
	// or NAME.yml).
	AnnotationPolicy = "sluice.dev/policy"
	// AnnotationName is the sandbox name (default "oci-" and the start of
	// the container id).
	AnnotationName = "sluice.dev/name"
)

// OCIState is the container state of the OCI runtime spec, as a runtime
// passes it to a hook on standard input.
type OCIState struct {
	OCIVersion  string            `json:"ociVersion"`
	ID          string            `json:"id"`
	Status      string            `json:"status"` // creating, created, running, stopped
	PID         int               `json:"pid,omitempty"`
	Bundle      string            `json:"bundle"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// ParseOCIState reads the state JSON a hook receives on standard input.
func ParseOCIState(r io.Reader) (OCIState, error) {
	var st OCIState
	dec := json.NewDecoder(io.LimitReader(r, 1<<20))
	if err := dec.Decode(&st); err != nil {
		return st, fmt.Errorf("reading the OCI state from standard input: %w", err)
	}
	if st.ID == "" {
		return st, errors.New("OCI state has no container id")
	}
	switch st.Status {
	case "creating", "created", "running", "stopped":
	default:
		return st, fmt.Errorf("OCI state of %s has status %q: expect creating, created, running or stopped", st.ID, st.Status)
	}
	if st.Status != "stopped" && st.PID <= 0 {
		return st, fmt.Errorf("OCI state of %s (%s) has no pid", st.ID, st.Status)
	}
	return st, nil
}

// HookOp is what a hook invocation does.
type HookOp int

const (
	// HookNone: the container did not opt in.
	HookNone HookOp = iota
	// HookAttach: attach the container's process (createRuntime and later).
	HookAttach
	// HookDetach: the container stopped (poststop).
	HookDetach
)

func (o HookOp) String() string {
	switch o {
	case HookAttach:
		return "attach"
	case HookDetach:
		return "detach"
	default:
		return "none"
	}
}

// HookConfig is how a hook resolves policies.
type HookConfig struct {
	// PolicyDirs are searched, in order, for policy names.
	PolicyDirs []string
	// AllowPaths lets the annotation name an absolute file anywhere; off,
	// an absolute path must lie in one of PolicyDirs.
	AllowPaths bool
}

// HookPlan is what to ask the daemon.
type HookPlan struct {
	Op         HookOp
	Name       string
	PID        int
	PolicyFile string
	Policy     []byte
	// Labels are the container's annotations (sluice.dev/policy and
	// sluice.dev/name aside) that are valid labels (audit.ValidLabel), at
	// most audit.MaxLabels of them in key order.
	Labels map[string]string
	// Rootfs is the container's root file system as seen in its mount
	// namespace while the runtime runs createRuntime hooks (before
	// pivot_root); "" once the container runs in it.
	Rootfs string
}

// AnnotationLabels selects a container's annotations as sandbox labels:
// the valid ones (audit.ValidLabel) other than sluice.dev/policy and
// sluice.dev/name, at most audit.MaxLabels in key order; nil without.
func AnnotationLabels(annotations map[string]string) map[string]string {
	keys := make([]string, 0, len(annotations))
	for k, v := range annotations {
		if k != AnnotationPolicy && k != AnnotationName && audit.ValidLabel(k, v) {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	slices.Sort(keys)
	out := map[string]string{}
	for _, k := range keys[:min(len(keys), audit.MaxLabels)] {
		out[k] = annotations[k]
	}
	return out
}

var policyNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// maxPolicySize bounds what a hook reads as a policy.
const maxPolicySize = 1 << 20

// PlanHook decides what a hook does for a container state. A container
// without the policy annotation is left alone (HookNone), so the hook can
// be installed for every container.
func PlanHook(st OCIState, cfg HookConfig) (HookPlan, error) {
	ref, ok := st.Annotations[AnnotationPolicy]
	if !ok {
		return HookPlan{Op: HookNone}, nil
	}
	name := st.Annotations[AnnotationName]
	if name == "" {
		id := st.ID
		if len(id) > 32 {
			id = id[:32]
		}
		name = SandboxName("oci-" + id)
	} else if SandboxName(name) != name {
		return HookPlan{}, fmt.Errorf("annotation %s: invalid sandbox name %q: use letters, digits, '.', '_' and '-' (at most 63)", AnnotationName, name)
	}
	if st.Status == "stopped" {
		return HookPlan{Op: HookDetach, Name: name}, nil
	}
	file, err := resolvePolicy(strings.TrimSpace(ref), cfg)
	if err != nil {
		return HookPlan{}, fmt.Errorf("annotation %s of container %s: %w", AnnotationPolicy, st.ID, err)
	}
	data, err := readPolicy(file)
	if err != nil {
		return HookPlan{}, fmt.Errorf("annotation %s of container %s: %w", AnnotationPolicy, st.ID, err)
	}
	plan := HookPlan{Op: HookAttach, Name: name, PID: st.PID, PolicyFile: file, Policy: data, Labels: AnnotationLabels(st.Annotations)}
	if st.Status == "creating" {
		plan.Rootfs = bundleRootfs(st.Bundle)
	}
	return plan, nil
}

// bundleRootfs reads root.path of the bundle's config.json (relative to the
// bundle unless absolute); "" when there is none.
func bundleRootfs(bundle string) string {
	if bundle == "" || !filepath.IsAbs(bundle) {
		return ""
	}
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return ""
	}
	var cfg struct {
		Root struct {
			Path string `json:"path"`
		} `json:"root"`
	}
	if json.Unmarshal(data, &cfg) != nil || cfg.Root.Path == "" {
		return ""
	}
	if filepath.IsAbs(cfg.Root.Path) {
		return filepath.Clean(cfg.Root.Path)
	}
	return filepath.Join(bundle, cfg.Root.Path)
}

// ResolvePolicy finds the file a policy reference names: an absolute path,
// or a name in one of cfg.PolicyDirs.
func ResolvePolicy(ref string, cfg HookConfig) (string, error) { return resolvePolicy(ref, cfg) }

func resolvePolicy(ref string, cfg HookConfig) (string, error) {
	if ref == "" {
		return "", errors.New("empty policy reference")
	}
	if filepath.IsAbs(ref) {
		clean := filepath.Clean(ref)
		if cfg.AllowPaths {
			return clean, nil
		}
		for _, d := range cfg.PolicyDirs {
			if rel, err := filepath.Rel(filepath.Clean(d), clean); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") && rel != "." {
				return clean, nil
			}
		}
		return "", fmt.Errorf("policy path %s is outside the policy directories (%s): name the policy instead, or run the hook with --allow-paths", clean, strings.Join(cfg.PolicyDirs, ", "))
	}
	if !policyNameRE.MatchString(ref) || strings.Contains(ref, "..") {
		return "", fmt.Errorf("invalid policy name %q: use letters, digits, '.', '_' and '-', or an absolute path", ref)
	}
	for _, d := range cfg.PolicyDirs {
		for _, cand := range []string{ref, ref + ".yaml", ref + ".yml"} {
			p := filepath.Join(d, cand)
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
				return p, nil
			}
		}
	}
	return "", fmt.Errorf("no policy named %q in %s", ref, strings.Join(cfg.PolicyDirs, ", "))
}

// ReadPolicy reads a policy file, refusing anything but a regular file of
// at most 1 MiB. Errors never quote the content.
func ReadPolicy(path string) ([]byte, error) { return readPolicy(path) }

func readPolicy(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading policy: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("reading policy: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("policy %s is not a regular file", path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxPolicySize+1))
	if err != nil {
		return nil, fmt.Errorf("reading policy %s: %w", path, err)
	}
	if len(data) > maxPolicySize {
		return nil, fmt.Errorf("policy %s is larger than %d bytes", path, maxPolicySize)
	}
	return data, nil
}
