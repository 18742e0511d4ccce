package runner

import (
	"context"
	"os/exec"
	"slices"
	"testing"

	"github.com/sluice-dev/sluice/pkg/policy"
)

// TestExitCode: the exit status as a shell reports it.
func TestExitCode(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		argv []string
		want int
	}{
		{"success", []string{"true"}, 0},
		{"status", []string{"sh", "-c", "exit 3"}, 3},
		{"signal", []string{"sh", "-c", "kill -9 $$"}, 128 + 9},
	} {
		err := exec.CommandContext(context.Background(), c.argv[0], c.argv[1:]...).Run()
		if got, err := exitCode(err); err != nil || got != c.want {
			t.Errorf("%s: exitCode = %d, %v; want %d", c.name, got, err, c.want)
		}
	}
	if _, err := exitCode(exec.Command("/nonexistent/cmd").Run()); err == nil {
		t.Error("a command that could not start has no exit status")
	}
}

// TestSetEnvAndHidden: the CA variables come first, then the policy's env
// sorted by name; the state, run and pin directories and the secrets and
// audit files are hidden from the command.
func TestSetEnvAndHidden(t *testing.T) {
	t.Parallel()
	pol := &policy.Policy{Env: map[string]string{"B": "2", "A": "1"}}
	r := &run{o: Options{SecretsFile: "/etc/s.env", AuditPath: "-", PinDir: "/sys/fs/bpf/x"}, pol: pol, dir: "/tmp/state",
		trust: trustFiles{tmp: "/tmp/run", bundle: "/tmp/run/ca-bundle.pem", caOnly: "/tmp/run/sluice-ca.pem"}}
	set := r.setEnv()
	if len(set) < 2 || set[len(set)-2] != "A=1" || set[len(set)-1] != "B=2" {
		t.Errorf("setEnv = %q, want the CA variables then A=1, B=2", set)
	}
	hide := r.hidden()
	for _, want := range []string{"/tmp/state", "/var/lib/sluice", "/run/sluice", "/sys/fs/bpf/x", "/etc/s.env"} {
		if !slices.Contains(hide, want) {
			t.Errorf("hidden = %q, lacks %s", hide, want)
		}
	}
	if slices.Contains(hide, "-") {
		t.Errorf("hidden = %q holds the stderr audit sink", hide)
	}
}
