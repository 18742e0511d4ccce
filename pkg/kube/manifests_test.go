package kube

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/sluice-dev/sluice/pkg/daemon"
	"github.com/sluice-dev/sluice/pkg/defaults"
	"github.com/sluice-dev/sluice/pkg/policy"
	"gopkg.in/yaml.v3"
)

// The deploy manifests are checked here without a cluster: every document
// has a known apiVersion/kind, names are valid, references resolve
// (volumes, ConfigMaps, Secrets, the service account, RBAC), the DaemonSet
// has the host access the agent needs, the policies parse, and the daemon
// config loads with unknown fields refused. scripts/deploy/kubernetes/
// validate.sh adds a strict decode into the official Kubernetes API types.

const manifestDir = "../../scripts/deploy/kubernetes"

type obj = map[string]any

func loadManifests(t *testing.T, file string) []obj {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(manifestDir, file))
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var out []obj
	for {
		var o obj
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if o != nil {
			o["__file"] = file
			out = append(out, o)
		}
	}
	return out
}

func get(o any, path ...string) any {
	for _, p := range path {
		m, ok := o.(obj)
		if !ok {
			return nil
		}
		o = m[p]
	}
	return o
}

func str(o any, path ...string) string { s, _ := get(o, path...).(string); return s }

func list(o any, path ...string) []any { l, _ := get(o, path...).([]any); return l }

var knownKinds = map[string]map[string]bool{
	"v1":                           {"Namespace": true, "ServiceAccount": true, "ConfigMap": true, "Secret": true, "Pod": true},
	"apps/v1":                      {"DaemonSet": true},
	"rbac.authorization.k8s.io/v1": {"ClusterRole": true, "ClusterRoleBinding": true},
}

var clusterScoped = map[string]bool{"Namespace": true, "ClusterRole": true, "ClusterRoleBinding": true}

var dns1123 = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`)

func TestManifests(t *testing.T) {
	kust := loadManifests(t, "kustomization.yaml")[0]
	var files []string
	for _, r := range list(kust, "resources") {
		files = append(files, r.(string))
	}
	// Every manifest is either in the kustomization or the example pod.
	yamls, _ := filepath.Glob(filepath.Join(manifestDir, "*.yaml"))
	for _, y := range yamls {
		b := filepath.Base(y)
		if b == "kustomization.yaml" || b == "example-pod.yaml" {
			continue
		}
		found := false
		for _, f := range files {
			found = found || f == b
		}
		if !found {
			t.Errorf("%s is not listed in kustomization.yaml", b)
		}
	}
	var all []obj
	for _, f := range append(files, "example-pod.yaml") {
		all = append(all, loadManifests(t, f)...)
	}
	byKind := map[string]map[string]obj{}
	for _, o := range all {
		api, kind, name := str(o, "apiVersion"), str(o, "kind"), str(o, "metadata", "name")
		where := o["__file"].(string) + ": " + kind + "/" + name
		if !knownKinds[api][kind] {
			t.Errorf("%s: unknown apiVersion/kind %s %s", where, api, kind)
		}
		if !dns1123.MatchString(name) || len(name) > 63 {
			t.Errorf("%s: invalid metadata.name", where)
		}
		ns := str(o, "metadata", "namespace")
		if clusterScoped[kind] && ns != "" {
			t.Errorf("%s: cluster-scoped object with a namespace", where)
		}
		if !clusterScoped[kind] && kind != "Pod" && ns != "sluice-system" {
			t.Errorf("%s: namespace %q, want sluice-system", where, ns)
		}
		if byKind[kind] == nil {
			byKind[kind] = map[string]obj{}
		}
		byKind[kind][name] = o
	}
	for _, kind := range []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Secret", "DaemonSet"} {
		if len(byKind[kind]) == 0 {
			t.Errorf("no %s", kind)
		}
	}

	// RBAC: the binding ties the agent's service account to a role that
	// can list and watch pods.
	for _, b := range byKind["ClusterRoleBinding"] {
		role := byKind["ClusterRole"][str(b, "roleRef", "name")]
		if role == nil || str(b, "roleRef", "kind") != "ClusterRole" || str(b, "roleRef", "apiGroup") != "rbac.authorization.k8s.io" {
			t.Errorf("binding %s: roleRef does not name a ClusterRole here", str(b, "metadata", "name"))
			continue
		}
		for _, s := range list(b, "subjects") {
			if str(s, "kind") != "ServiceAccount" || byKind["ServiceAccount"][str(s, "name")] == nil {
				t.Errorf("binding subject %v is not the service account here", s)
			}
		}
		verbs := map[string]bool{}
		for _, r := range list(role, "rules") {
			for _, res := range list(r, "resources") {
				if res == "pods" {
					for _, v := range list(r, "verbs") {
						verbs[v.(string)] = true
					}
				}
			}
		}
		if !verbs["list"] || !verbs["watch"] {
			t.Errorf("role %s cannot list and watch pods: %v", str(role, "metadata", "name"), verbs)
		}
	}

	// The DaemonSet.
	ds := byKind["DaemonSet"]["sluice"]
	if ds == nil {
		t.Fatal("no DaemonSet sluice")
	}
	spec := get(ds, "spec", "template", "spec")
	for k, v := range get(ds, "spec", "selector", "matchLabels").(obj) {
		if str(ds, "spec", "template", "metadata", "labels", k) != v {
			t.Errorf("selector label %s=%v does not match the pod template", k, v)
		}
	}
	if get(spec, "hostPID") != true {
		t.Error("DaemonSet needs hostPID: true (containerd init pids are host pids)")
	}
	if byKind["ServiceAccount"][str(spec, "serviceAccountName")] == nil {
		t.Errorf("serviceAccountName %q is not defined", str(spec, "serviceAccountName"))
	}
	volumes := map[string]any{}
	hostPaths := map[string]bool{}
	for _, v := range list(spec, "volumes") {
		volumes[str(v, "name")] = v
		if p := str(v, "hostPath", "path"); p != "" {
			hostPaths[p] = true
		}
		if cm := str(v, "configMap", "name"); cm != "" && byKind["ConfigMap"][cm] == nil {
			t.Errorf("volume %s: ConfigMap %s is not defined", str(v, "name"), cm)
		}
		if s := str(v, "secret", "secretName"); s != "" && byKind["Secret"][s] == nil {
			t.Errorf("volume %s: Secret %s is not defined", str(v, "name"), s)
		}
	}
	for _, p := range []string{"/sys/fs/bpf", "/sys/fs/cgroup", "/run/containerd", "/var/lib/sluice", "/run/sluice"} {
		if !hostPaths[p] {
			t.Errorf("DaemonSet lacks the host mount %s", p)
		}
	}
	containers := map[string]any{}
	for _, c := range append(list(spec, "initContainers"), list(spec, "containers")...) {
		name := str(c, "name")
		containers[name] = c
		if str(c, "image") == "" {
			t.Errorf("container %s has no image", name)
		}
		for _, m := range list(c, "volumeMounts") {
			if volumes[str(m, "name")] == nil {
				t.Errorf("container %s mounts undefined volume %s", name, str(m, "name"))
			}
		}
	}
	daemonC, watchC := containers["daemon"], containers["pod-watch"]
	if daemonC == nil || watchC == nil {
		t.Fatalf("containers %v, want daemon and pod-watch", keys(containers))
	}
	cmd := func(c any) string {
		var parts []string
		for _, a := range list(c, "command") {
			parts = append(parts, a.(string))
		}
		return strings.Join(parts, " ")
	}
	if !strings.Contains(cmd(daemonC), "sluice daemon --config /etc/sluice/config.yaml") {
		t.Errorf("daemon command %q", cmd(daemonC))
	}
	if !strings.Contains(cmd(watchC), "kube-watch --node=$(NODE_NAME)") || !strings.Contains(cmd(watchC), "--policy-dir=/etc/sluice/policies") {
		t.Errorf("pod-watch command %q", cmd(watchC))
	}
	nodeEnv := false
	for _, e := range list(watchC, "env") {
		nodeEnv = nodeEnv || (str(e, "name") == "NODE_NAME" && str(e, "valueFrom", "fieldRef", "fieldPath") == "spec.nodeName")
	}
	if !nodeEnv {
		t.Error("pod-watch lacks NODE_NAME from the downward API")
	}

	// The config loads (unknown fields refused) and the policies parse.
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfgFile, []byte(str(byKind["ConfigMap"]["sluice-config"], "data", "config.yaml")), 0o600)
	if cfg, err := daemon.LoadConfig(cfgFile); err != nil {
		t.Errorf("ConfigMap sluice-config: %v", err)
	} else if cfg.Socket != "/run/sluice/sluice.sock" {
		t.Errorf("socket %q is not on the shared /run/sluice mount", cfg.Socket)
	}
	pols := get(byKind["ConfigMap"]["sluice-policies"], "data").(obj)
	for key, text := range pols {
		if _, err := policy.Parse(key, []byte(text.(string))); err != nil {
			t.Errorf("policy %s: %v", key, err)
		}
	}
	// The example pod names a policy that exists.
	for _, p := range byKind["Pod"] {
		name := str(p, "metadata", "annotations", AnnotationPolicy)
		if pols[name+".yaml"] == nil && pols[name] == nil {
			t.Errorf("pod %s: policy %q is not in sluice-policies (keys %v)", str(p, "metadata", "name"), name, keys(pols))
		}
	}
}

// TestPackagedConfig: the default config of the .deb loads.
func TestPackagedConfig(t *testing.T) {
	cfg, err := daemon.LoadConfig("../../scripts/deploy/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Socket != defaults.Socket || cfg.StateDir != defaults.StateDir {
		t.Fatalf("config %+v", cfg)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
