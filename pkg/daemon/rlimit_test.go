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
// (6 descriptors each).
func TestRaiseNoFile(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to raise the hard RLIMIT_NOFILE")
	}
	var before unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &before); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Setrlimit(unix.RLIMIT_NOFILE, &before) })
	if err := raiseNoFile(slog.New(slog.NewTextHandler(io.Discard, nil))); errors.Is(err, unix.EPERM) {
		t.Skipf("no CAP_SYS_RESOURCE to raise the hard limit (%d: at most %d sandboxes here): %v", before.Max, before.Max/fdsPerSandbox, err)
	}
	var after unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &after); err != nil {
		t.Fatal(err)
	}
	if after.Cur < 10000*fdsPerSandbox+1000 {
		t.Fatalf("RLIMIT_NOFILE %d after raiseNoFile: not enough for 10,000 sandboxes", after.Cur)
	}
}
