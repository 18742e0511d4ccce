package defaults_test

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/sluice-dev/sluice/pkg/daemon"
	"github.com/sluice-dev/sluice/pkg/defaults"
	"github.com/sluice-dev/sluice/pkg/enforcer"
)

// TestPackagedFilesAgree: the files the package installs use the defaults
// the commands use: the systemd unit passes ConfigFile, package.sh installs
// scripts/deploy/config.yaml there, and that config names Socket, StateDir
// and AuditLog.
func TestPackagedFilesAgree(t *testing.T) {
	t.Parallel()
	unit, err := os.ReadFile("../../scripts/deploy/systemd/sluice.service")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^ExecStart=\S+ daemon --config (\S+)$`).FindSubmatch(unit)
	if m == nil || string(m[1]) != defaults.ConfigFile {
		t.Errorf("systemd unit: ExecStart does not pass --config %s", defaults.ConfigFile)
	}
	pkg, err := os.ReadFile("../../scripts/package.sh")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(pkg), "scripts/deploy/config.yaml \"$STAGE"+defaults.ConfigFile+"\"") {
		t.Errorf("package.sh does not install scripts/deploy/config.yaml as %s", defaults.ConfigFile)
	}

	cfg, err := daemon.LoadConfig("../../scripts/deploy/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ field, got, want string }{
		{"socket", cfg.Socket, defaults.Socket},
		{"state_dir", cfg.StateDir, defaults.StateDir},
		{"audit", cfg.Audit, defaults.AuditLog},
	} {
		if c.got != c.want {
			t.Errorf("scripts/deploy/config.yaml: %s is %q, want %q", c.field, c.got, c.want)
		}
	}

	kube, err := os.ReadFile("../../scripts/deploy/kubernetes/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"socket: " + defaults.Socket, "state_dir: " + defaults.StateDir} {
		if !strings.Contains(string(kube), want) {
			t.Errorf("scripts/deploy/kubernetes/config.yaml lacks %q", want)
		}
	}
}

// TestEnforcerPinDir: the enforcer pins where the commands look.
func TestEnforcerPinDir(t *testing.T) {
	t.Parallel()
	if enforcer.DefaultPinDir != defaults.PinDir {
		t.Errorf("enforcer.DefaultPinDir %q, want defaults.PinDir %q", enforcer.DefaultPinDir, defaults.PinDir)
	}
}
