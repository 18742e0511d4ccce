package daemon

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestRaiseNoFile: as root the daemon can hold 10,000 sandboxes' listeners
// (up to 4 descriptors each).
func TestRaiseNoFile(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to raise the hard RLIMIT_NOFILE")
	}
	var before unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &before); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Setrlimit(unix.RLIMIT_NOFILE, &before) })
	err := raiseNoFile(slog.New(slog.NewTextHandler(io.Discard, nil)))
	var after unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &after); err != nil {
		t.Fatal(err)
	}
	if errors.Is(err, unix.EPERM) {
		// Root without CAP_SYS_RESOURCE (this CI host: hard limit 20,000)
		// cannot lift the hard limit; the soft one must still reach it.
		if after.Cur != before.Max {
			t.Fatalf("RLIMIT_NOFILE soft %d after a refused raise, want the hard limit %d", after.Cur, before.Max)
		}
		t.Logf("hard limit %d kept (no CAP_SYS_RESOURCE): at most %d sandboxes here", before.Max, before.Max/fdsPerSandbox)
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if after.Cur < 10000*fdsPerSandbox+1000 {
		t.Fatalf("RLIMIT_NOFILE %d after raiseNoFile: not enough for 10,000 sandboxes", after.Cur)
	}
}
