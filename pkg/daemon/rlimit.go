package daemon

import (
	"log/slog"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// fdsPerSandbox is what one sandbox holds open: the proxy and resolver
// listeners of both families (six sockets).
const fdsPerSandbox = 6

// raiseNoFile lifts RLIMIT_NOFILE (soft and hard) to fs.nr_open when the
// process may (root): 10,000 sandboxes need 60,000 descriptors for their
// listeners alone (issue #21), above the usual hard limits (20,000 here;
// systemd's default 524,288 is enough). Raising the hard limit needs
// CAP_SYS_RESOURCE. Failure is logged and returned, not fatal.
func raiseNoFile(log *slog.Logger) error {
	var cur unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &cur); err != nil {
		return err
	}
	want := uint64(1 << 20)
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && n > 0 {
			want = n
		}
	}
	if cur.Cur >= want && cur.Max >= want {
		return nil
	}
	lim := unix.Rlimit{Cur: max(cur.Cur, want), Max: max(cur.Max, want)}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		// Not root: at least the soft limit up to the hard one.
		lim = unix.Rlimit{Cur: cur.Max, Max: cur.Max}
		unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
		log.Info("open-file limit not raised: each sandbox holds 6 descriptors",
			"limit", cur.Max, "sandboxes", cur.Max/fdsPerSandbox, "err", err)
		return err
	}
	return nil
}
