package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// configFD is the init's end of the configuration pipe (ExtraFiles[0]).
const configFD = 3

// initFailed is the init's exit status when it could not start the
// command (before exec); sluice run reports the init's message.
const initFailed = 125

// MaybeInit runs the sandbox init and exits when the process was started
// as `sluice __sandbox-init`; otherwise it returns at once. Call it first
// thing in main.
func MaybeInit() {
	if len(os.Args) < 2 || os.Args[1] != InitArg || os.Getpid() != 1 {
		return
	}
	// Capabilities, no_new_privs and seccomp are per thread: do all of it,
	// and the fork, on this one.
	runtime.LockOSThread()
	code, err := initMain()
	if err != nil {
		fmt.Fprintf(os.Stderr, "sluice: sandbox: %v\n", err)
	}
	os.Exit(code)
}

func initMain() (int, error) {
	var cfg Config
	f := os.NewFile(configFD, "sandbox-config")
	if err := json.NewDecoder(f).Decode(&cfg); err != nil {
		return initFailed, fmt.Errorf("reading the sandbox configuration: %w", err)
	}
	f.Close()
	if len(cfg.Argv) == 0 {
		return initFailed, errors.New("no command")
	}
	// Nobody in the sandbox may read this process's memory or ptrace it.
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return initFailed, fmt.Errorf("prctl(PR_SET_DUMPABLE): %w", err)
	}
	// The cgroup namespace is rooted where we stand: the sandbox cgroup.
	if err := unix.Unshare(unix.CLONE_NEWCGROUP); err != nil {
		return initFailed, fmt.Errorf("unsharing the cgroup namespace: %w", err)
	}
	if err := setupMounts(&cfg); err != nil {
		return initFailed, err
	}
	path, err := lookPath(cfg.Argv[0], cfg.Env)
	if err != nil {
		return 127, err
	}
	if err := dropCaps(); err != nil {
		return initFailed, err
	}
	if err := installFilter(); err != nil {
		return initFailed, err
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2, unix.SIGWINCH, unix.SIGCONT, unix.SIGTSTP)
	pid, err := syscall.ForkExec(path, cfg.Argv, &syscall.ProcAttr{
		Dir:   cfg.Dir,
		Env:   cfg.Env,
		Files: []uintptr{0, 1, 2},
		Sys: &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: cfg.UID, Gid: cfg.GID, Groups: cfg.Groups},
		},
	})
	if err != nil {
		return 126, fmt.Errorf("starting %s: %w", cfg.Argv[0], err)
	}
	go func() {
		for s := range sigs {
			_ = unix.Kill(pid, s.(syscall.Signal))
		}
	}()
	// pid 1 reaps every orphan; it exits with the command's status, which
	// ends the namespace (the kernel kills what is left).
	for {
		var ws unix.WaitStatus
		p, err := unix.Wait4(-1, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return initFailed, fmt.Errorf("waiting for the command: %w", err)
		}
		if p != pid {
			continue
		}
		switch {
		case ws.Exited():
			return ws.ExitStatus(), nil
		case ws.Signaled():
			return 128 + int(ws.Signal()), nil
		}
	}
}

// lookPath resolves argv[0] with the command's PATH.
func lookPath(name string, env []string) (string, error) {
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, kv := range env {
		if len(kv) > 5 && kv[:5] == "PATH=" {
			path = kv[5:]
		}
	}
	old := os.Getenv("PATH")
	os.Setenv("PATH", path)
	defer os.Setenv("PATH", old)
	p, err := exec.LookPath(name)
	if err != nil && !errors.Is(err, exec.ErrDot) {
		return "", err
	}
	return p, nil
}
