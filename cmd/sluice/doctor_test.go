package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-dev/sluice/pkg/doctor"
	"github.com/sluice-dev/sluice/pkg/testutil"
)

func opsCLI(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	code = execute(args, strings.NewReader(stdin), &out, &errb)
	return out.String(), errb.String(), code
}

// TestDoctorThisHost: on this machine (hybrid cgroups) doctor passes and
// names the hybrid mount.
func TestDoctorThisHost(t *testing.T) {
	testutil.RequirePrivileged(t)
	sock := filepath.Join(t.TempDir(), "none.sock")
	out, errOut, code := opsCLI(t, "", "doctor", "--socket", sock)
	if code != 0 {
		t.Fatalf("doctor exit %d:\n%s%s", code, out, errOut)
	}
	data, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(data), "/sys/fs/cgroup/unified ") && !strings.Contains(out, "hybrid mode: cgroup2 at /sys/fs/cgroup/unified") {
		t.Fatalf("doctor does not report the hybrid mount:\n%s", out)
	}
	jout, _, code := opsCLI(t, "", "doctor", "--json", "--socket", sock)
	var rep doctor.Report
	if err := json.Unmarshal([]byte(jout), &rep); err != nil || code != 0 || !rep.OK || rep.CgroupMode == "" {
		t.Fatalf("doctor --json: exit %d, %v: %s", code, err, jout)
	}
}

// TestDoctorMissingBPFFS: with bpffs absent where it must be, doctor exits
// non-zero and prints the fix.
func TestDoctorMissingBPFFS(t *testing.T) {
	tests := []struct {
		name string
		args []string
		fix  string
	}{
		{name: "bpffs not mounted at the path", args: []string{"--bpffs", t.TempDir()}, fix: "fix: mount it: mount -t bpf bpffs " + ""},
		{name: "mount table without bpffs", args: []string{"--mountinfo", "../../pkg/doctor/testdata/mountinfo-hybrid-no-bpffs"}, fix: "fix: mount it: mount -t bpf bpffs /sys/fs/bpf"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"doctor", "--socket", filepath.Join(t.TempDir(), "s")}, tt.args...)
			out, errOut, code := opsCLI(t, "", args...)
			if code == 0 {
				t.Fatalf("doctor exit 0 without bpffs:\n%s", out)
			}
			if !strings.Contains(out, "FAIL  bpffs") || !strings.Contains(out, tt.fix) {
				t.Fatalf("no bpffs failure with its fix:\n%s", out)
			}
			if !strings.Contains(errOut, "check(s) failed") {
				t.Fatalf("stderr: %q", errOut)
			}
		})
	}
}

func TestDoctorSkip(t *testing.T) {
	// The bpffs failure is skipped: exit 0 with no bpffs line.
	out, errOut, code := opsCLI(t, "", "doctor", "--skip", "bpffs", "--skip", "daemon", "--skip", "bpf syscall", "--skip", "capabilities",
		"--mountinfo", "../../pkg/doctor/testdata/mountinfo-hybrid-no-bpffs")
	if code != 0 || strings.Contains(out, "bpffs") || strings.Contains(out, "daemon") {
		t.Fatalf("exit %d:\n%s%s", code, out, errOut)
	}
	if _, errOut, code := opsCLI(t, "", "doctor", "--skip", "nope"); code == 0 || !strings.Contains(errOut, `--skip "nope": expect one of "kernel"`) {
		t.Fatalf("unknown check: exit %d %s", code, errOut)
	}
}

func TestDoctorStrict(t *testing.T) {
	testutil.RequirePrivileged(t)
	_, _, code := opsCLI(t, "", "doctor", "--strict", "--socket", filepath.Join(t.TempDir(), "none.sock"))
	if code != 1 {
		t.Fatalf("--strict with no daemon: exit %d, want 1", code)
	}
}

func TestCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish"} {
		out, errOut, code := opsCLI(t, "", "completion", shell)
		if code != 0 || !strings.Contains(out, "sluice") || len(out) < 1000 {
			t.Fatalf("completion %s: exit %d, %d bytes, %s", shell, code, len(out), errOut)
		}
	}
}

func TestManPages(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "man1")
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	_, errOut, code := opsCLI(t, "", "man", "--dir", dir)
	if code != 0 {
		t.Fatalf("man: exit %d: %s", code, errOut)
	}
	for _, page := range []string{"sluice.1", "sluice-doctor.1", "sluice-oci-hook.1", "sluice-attach.1", "sluice-container-resolve.1"} {
		data, err := os.ReadFile(filepath.Join(dir, page))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(data, []byte(".TH \"SLUICE\" \"1\" \"Nov 2023\"")) {
			t.Fatalf("%s: unexpected header: %.200s", page, data)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "sluice-man.1")); err == nil {
		t.Fatal("the hidden man command has a man page")
	}
}
