package proxy

import (
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Per-process rules (processes: on a rule). The kernel records, at
// connect(), the pid of the process that opened each redirected socket
// (Origin.PID, from the enforcer's original-destination lookup). When the
// proxy accepts the connection, before reading a byte of it, it resolves
// that pid's executable from /proc/PID/exe (the file the kernel executed,
// not comm, which prctl(PR_SET_NAME) changes at will) and matches the
// connection and its requests against the policy's view for that
// executable (policy.ForProcess).
//
// Races, and how they are bounded:
//   - pid reuse: the executable is read through a pidfd opened first and
//     checked to be still alive after the read, so the path belongs to the
//     process the pid named when the proxy looked. A pid that was reused
//     between connect() and accept (the process exited, the pid space
//     wrapped around pid_max) is not detected; the window is the loopback
//     handshake plus the accept, well under a millisecond, against a pid
//     space of 4M on 64-bit kernels.
//   - exec after connect: a process that connects and then execs an
//     allowed program before the proxy accepts is attributed to that
//     program. The program it execs is then what runs in that process; the
//     attacker's code must drive the socket from another process that
//     shares it (forked before connect, or SCM_RIGHTS). The window is the
//     same sub-millisecond one, and the check happens once per connection
//     (never per request), so keep-alive does not widen it.
//   - an exited process: its executable cannot be read; rules with
//     processes: do not apply (fail closed).
//   - a base name matches any executable file of that name, including one
//     the sandbox wrote itself: where the sandbox can write and execute
//     files, name allowed programs by absolute path (/usr/bin/git), in a
//     directory the sandbox cannot write.

// procExe is the default Config.Exe: the executable of pid, read through
// a pidfd (an error when it cannot be read: the process exited, or no
// permission).
func procExe(pid uint32) (string, error) {
	if pid == 0 {
		return "", os.ErrNotExist
	}
	fd, err := unix.PidfdOpen(int(pid), 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	exe, err := os.Readlink("/proc/" + strconv.FormatUint(uint64(pid), 10) + "/exe")
	if err != nil {
		return "", err
	}
	// Still the same process: the pid was not reused during the read.
	if err := unix.PidfdSendSignal(fd, 0, nil, 0); err != nil {
		return "", err
	}
	return exe, nil
}

// procExeQuick reads the executable of pid without the pidfd check: for
// the events only, when no rule depends on it.
func procExeQuick(pid uint32) (string, error) {
	if pid == 0 {
		return "", os.ErrNotExist
	}
	return os.Readlink("/proc/" + strconv.FormatUint(uint64(pid), 10) + "/exe")
}

// exeOf resolves the executable of the process that opened a connection.
// Without processes: rules in the policy it is only recorded in events, and
// read with one readlink.
func (s *server) exeOf(pid uint32) string {
	f := s.p.cfg.Exe
	if f == nil {
		f = procExe
		if !s.sb.Policy().HasProcesses() {
			f = procExeQuick
		}
	}
	exe, err := f(pid)
	if err != nil {
		s.log.Debug("executable of the connecting process unknown", "pid", pid, "err", err)
		return ""
	}
	return exe
}

// processReason is a refusal that names the process.
func (ci *connInfo) processReason(reason string) string {
	return reason + " (pid " + strconv.FormatUint(uint64(ci.orig.PID), 10) + ")"
}
