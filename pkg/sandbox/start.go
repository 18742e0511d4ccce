package sandbox

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"
)

// Command returns the init process for cfg, not started: the sluice binary
// re-executed as InitArg in new PID and mount namespaces (the init adds
// the cgroup namespace itself, once inside the cgroup), placed directly in
// the cgroup cgroupFD refers to, killed when sluice dies. Its environment
// is empty: cfg travels over a pipe. Call Start on the result.
func Command(cgroupFD int, stdin io.Reader, stdout, stderr io.Writer) *exec.Cmd {
	cmd := exec.Command("/proc/self/exe", InitArg)
	cmd.Env = []string{}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  unix.CLONE_NEWPID | unix.CLONE_NEWNS,
		UseCgroupFD: true,
		CgroupFD:    cgroupFD,
		Pdeathsig:   syscall.SIGKILL,
	}
	return cmd
}

// Start starts cmd (from Command) and hands it cfg.
func Start(cmd *exec.Cmd, cfg *Config) error {
	data, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd.ExtraFiles = []*os.File{r}
	err = cmd.Start()
	r.Close()
	if err != nil {
		w.Close()
		return fmt.Errorf("starting the sandbox init: %w", err)
	}
	go func() {
		// The init reads it all before anything else; a dead init gives
		// EPIPE, seen as the init's exit status.
		w.Write(data)
		w.Close()
	}()
	return nil
}
