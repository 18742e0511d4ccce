package daemon

import (
	"log/slog"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// fdsPerSandbox is what one sandbox of the daemon's network namespace
// holds open: its UDP resolver socket (the proxy and IPv6 resolver
// listeners are shared, shared.go). A sandbox in its own namespace holds
// four (proxy and resolver, both families).
const fdsPerSandbox = 1

// raiseNoFile lifts RLIMIT_NOFILE (soft and hard) to fs.nr_open when the
// process may (root): sandboxes in their own network namespaces hold four
// descriptors each (issue #21: 10,000 need 40,000), above the usual hard
// limits (20,000 here; systemd's default 524,288 is enough). Raising the hard limit needs
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
		log.Info("open-file limit not raised: a sandbox holds 1 descriptor (4 in its own network namespace)",
			"limit", cur.Max, "sandboxes", cur.Max/fdsPerSandbox, "err", err)
		return err
	}
	return nil
}
