package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/cgroup"
	"github.com/sluice-dev/sluice/pkg/testutil"
)

// TestOCIHookRuncEnforcedBeforeFirstInstruction runs a container with runc
// whose config.json has sluice's createRuntime and poststop hooks (as
// scripts/deploy/oci/sluice-hook.json installs them for Podman and CRI-O):
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
	pol := writePolicy(t, w.dir, "oci.yaml", `version: 1
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
	spec["annotations"] = map[string]string{"sluice.dev/policy": pol, "sluice.dev/name": "oci-e2e"}
	hook := map[string]any{"path": sluiceBin(t), "args": []string{"sluice", "oci-hook", "--allow-paths", "--socket", d.socket}, "timeout": 30}
	spec["hooks"] = map[string]any{"createRuntime": []any{hook}, "poststop": []any{hook}}
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
