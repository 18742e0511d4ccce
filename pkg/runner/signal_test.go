package runner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-dev/sluice/pkg/testutil"
)

// TestRunSignalDuringSetup (#15): a SIGTERM at any point of the setup,
// from the moment Run starts, stops it: the command never starts, Run
// returns 128+15, and nothing is left behind (no sandbox cgroup, pinned
// link or run record). Each case runs Run in a child process (this test
// binary, placed in a throwaway cgroup) that signals itself from the
// setup's test hook at one step and waits there until the signal was
// handled, so the signal lands exactly between two steps.
func TestRunSignalDuringSetup(t *testing.T) {
	if step := os.Getenv("SLUICE_TEST_SIGNAL_STEP"); step != "" {
		signalChild(step) // exits
	}
	testutil.RequirePrivileged(t)
	t.Parallel()
	for _, step := range []string{"start", "openRuntime", "createCgroup", "writeTrustFiles", "startSandbox"} {
		t.Run(step, func(t *testing.T) {
			t.Parallel()
			parent, _ := testutil.Cgroup(t)
			pin := testutil.PinDir(t)
			fd, err := unix.Open(parent, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestRunSignalDuringSetup$", "-test.count=1")
			cmd.Env = append(os.Environ(), "SLUICE_TEST_SIGNAL_STEP="+step, "SLUICE_TEST_PIN_DIR="+pin, "SLUICE_TEST_STATE_DIR="+t.TempDir())
			cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 128+int(syscall.SIGTERM) || !strings.Contains(string(out), "setup stopped at "+step) {
				t.Errorf("child: %v (want exit status %d after the hook at %s)\n%s", err, 128+int(syscall.SIGTERM), step, out)
			}
			// Nothing left: the child ran in parent, so its sandbox
			// cgroup would be below it.
			entries, err := os.ReadDir(parent)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				if e.IsDir() {
					t.Errorf("cgroup left behind: %s", filepath.Join(parent, e.Name()))
				}
			}
			if links, _ := os.ReadDir(filepath.Join(pin, "links")); len(links) != 0 {
				t.Errorf("pinned links left behind: %d", len(links))
			}
			recs, _ := os.ReadDir(runs.Path())
			for _, r := range recs {
				data, _ := os.ReadFile(filepath.Join(runs.Path(), r.Name()))
				if strings.Contains(string(data), parent+"/") {
					t.Errorf("run record left behind: %s", r.Name())
				}
			}
		})
	}
}

// signalChild is the child of TestRunSignalDuringSetup: Run with a hook
// that sends this process SIGTERM at step and waits until the setup saw
// it.
func signalChild(step string) {
	reached := false
	testHookSetup = func(ctx context.Context, s string) {
		if s != step {
			return
		}
		reached = true
		_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
		select {
		case <-ctx.Done():
		case <-time.After(time.Minute):
			fmt.Println("the setup did not see SIGTERM")
			os.Exit(3)
		}
	}
	code, err := Run(context.Background(), Options{
		PolicyFile:   "../../testdata/policies/demo.yaml",
		Command:      []string{"sleep", "600"},
		DNSUpstreams: []string{"127.0.0.1:53"},
		PinDir:       os.Getenv("SLUICE_TEST_PIN_DIR"),
		StateDir:     os.Getenv("SLUICE_TEST_STATE_DIR"),
		Stdout:       os.Stdout,
		Stderr:       os.Stderr,
	})
	if err != nil {
		fmt.Println("run:", err)
		os.Exit(2)
	}
	if reached {
		fmt.Println("setup stopped at " + step)
	}
	os.Exit(code)
}
