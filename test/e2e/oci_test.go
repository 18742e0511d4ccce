package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/cgroup"
	"github.com/sluice-dev/sluice/pkg/testutil"
)

// TestOCIHookRuncEnforcedBeforeFirstInstruction runs a container with runc
// whose config.json has sluice's createRuntime and poststop hooks, taken from
// scripts/deploy/oci/sluice-hook.json (what the package installs for Podman
// and CRI-O; the policy found by name in --policy-dir):
// the container's first instruction is already enforced by its policy, an
// allowed HTTPS host answers a client using the image's own trust store,
// the forbidden listener receives nothing, and the sandbox is gone when the
// container has ended.
func TestOCIHookRuncEnforcedBeforeFirstInstruction(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	if _, err := exec.LookPath("runc"); err != nil {
		t.Fatalf("runc is not installed: apt-get install runc (scripts/deps.sh)")
	}
	d := startDaemon(t, w, daemonOpts{})
	forbidden, hits := forbiddenListener(t)
	forbiddenAddr := fmt.Sprintf("127.0.0.2:%d", forbidden)
	// The policy is found by name in a policy directory, as the shipped
	// hook definition has it.
	policies := t.TempDir()
	writePolicy(t, policies, "oci.yaml", `version: 1
rules:
  - name: api
    hosts: [plain.test]
    headers:
      - {name: X-Fleet, type: plaintext, value: "oci"}
`)

	dir, err := os.MkdirTemp("", "sk-oci-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bundle := filepath.Join(dir, "bundle")
	rootfs := filepath.Join(bundle, "rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		t.Fatal(err)
	}
	untar := exec.Command("tar", "-C", rootfs, "-xf", "-")
	untar.Stdin = imageTar(t)
	if out, err := untar.CombinedOutput(); err != nil {
		t.Fatalf("unpacking the image: %v\n%s", err, out)
	}
	if out, err := exec.Command("runc", "spec", "--bundle", bundle).CombinedOutput(); err != nil {
		t.Fatalf("runc spec: %v\n%s", err, out)
	}
	var spec map[string]any
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &spec); err != nil {
		t.Fatal(err)
	}
	mnt, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	cgName := testutil.RandomName("sluice-test-oci-")
	t.Cleanup(func() { cgroup.Remove(filepath.Join(mnt, cgName), 5*time.Second) })
	script := fmt.Sprintf("/bin/fleetclient once %s plain.test; /bin/fleetclient https https://plain.test:%d/x",
		forbiddenAddr, w.api.Port)
	proc := spec["process"].(map[string]any)
	proc["terminal"] = false
	proc["args"] = []string{"/bin/sh", "-c", script}
	linux := spec["linux"].(map[string]any)
	var nss []any
	for _, ns := range linux["namespaces"].([]any) {
		if ns.(map[string]any)["type"] != "network" { // host network
			nss = append(nss, ns)
		}
	}
	linux["namespaces"] = nss
	linux["cgroupsPath"] = "/" + cgName
	spec["annotations"] = map[string]string{"sluice.dev/policy": "oci", "sluice.dev/name": "oci-e2e"}
	hook, stages := shippedOCIHook(t, spec["annotations"].(map[string]string), policies, d.socket)
	hooks := map[string]any{}
	for _, st := range stages {
		hooks[st] = []any{hook}
	}
	spec["hooks"] = hooks
	data, _ = json.MarshalIndent(spec, "", "  ")
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	runcRoot := filepath.Join(dir, "state")
	id := testutil.RandomName("sluice-oci-")
	run := exec.CommandContext(ctx, "runc", "--root", runcRoot, "run", "--bundle", bundle, id)
	t.Cleanup(func() { _ = exec.Command("runc", "--root", runcRoot, "delete", "--force", id).Run() })
	out, err := run.CombinedOutput()
	if err != nil {
		t.Fatalf("runc run: %v\n%s\ndaemon log:\n%s", err, out, d.log)
	}
	got := string(out)
	for _, want := range []string{
		"tcp " + forbiddenAddr + " error EPERM",
		"dns plain.test ok 127.0.0.1",
		"ok 200 hello from upstream /x",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("container output lacks %q:\n%s\ndaemon log:\n%s", want, got, d.log)
		}
	}
	if reqs := w.api.Requests(); len(reqs) == 0 || reqs[len(reqs)-1].Header.Get("X-Fleet") != "oci" {
		t.Errorf("the upstream did not get the intercepted request: %+v", reqs)
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("the forbidden listener received %d connections", n)
	}
	// poststop (or the daemon's own cgroup watch) detached it.
	waitFor(t, "oci-e2e to leave sluice list", 10*time.Second, func() bool { return listedCgroupID(t, d, "oci-e2e") == 0 })
	// The image on disk is unchanged.
	host, _ := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	img, _ := os.ReadFile(filepath.Join(rootfs, "etc/ssl/certs/ca-certificates.crt"))
	if string(img) != string(host) {
		t.Errorf("the image's trust file changed on disk")
	}
}

// shippedOCIHook reads the hook definition the package installs for Podman
// and CRI-O (scripts/deploy/oci/sluice-hook.json), checks that it fires for
// a container with annotations ann and runs at createRuntime and poststop,
// and returns it as a config.json hook (this build's binary, the test's
// policy directory and control socket) with its stages.
func shippedOCIHook(t *testing.T, ann map[string]string, policyDir, socket string) (map[string]any, []string) {
	t.Helper()
	data, err := os.ReadFile("../../scripts/deploy/oci/sluice-hook.json")
	if err != nil {
		t.Fatal(err)
	}
	var def struct {
		Hook struct {
			Args    []string `json:"args"`
			Timeout int      `json:"timeout"`
		} `json:"hook"`
		When struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"when"`
		Stages []string `json:"stages"`
	}
	if err := json.Unmarshal(data, &def); err != nil {
		t.Fatalf("sluice-hook.json: %v", err)
	}
	if strings.Join(def.Stages, ",") != "createRuntime,poststop" {
		t.Fatalf("sluice-hook.json: stages %v, want createRuntime and poststop", def.Stages)
	}
	for k, v := range def.When.Annotations {
		matched := false
		for ak, av := range ann {
			if regexp.MustCompile(k).MatchString(ak) && regexp.MustCompile(v).MatchString(av) {
				matched = true
			}
		}
		if !matched {
			t.Fatalf("sluice-hook.json: when.annotations %q: %q matches none of %v", k, v, ann)
		}
	}
	args := append([]string(nil), def.Hook.Args...)
	for i := range args {
		if i > 0 && args[i-1] == "--policy-dir" {
			args[i] = policyDir
		}
	}
	if len(args) < 2 || args[1] != "oci-hook" || !slices.Contains(args, policyDir) {
		t.Fatalf("sluice-hook.json: args %v, want oci-hook with --policy-dir", def.Hook.Args)
	}
	// The shipped timeout (15 s) is for an idle host; a loaded test machine
	// gets more.
	return map[string]any{"path": sluiceBin(t), "args": append(args, "--socket", socket), "timeout": max(def.Hook.Timeout, 30)}, def.Stages
}
