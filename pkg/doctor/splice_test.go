package doctor

import (
	"context"
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestSpliceCheck(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		probe  error
		status Status
		detail string
	}{
		{"supported", nil, OK, "in the kernel"},
		{"old kernel falls back", errors.New("attaching the sk_skb verdict to the sockhash: invalid argument"), Warn, "user-space splice"},
		{"no privilege falls back", unix.EPERM, Warn, "user-space splice"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := fakeEnv("mountinfo-unified", "status-root")
			e.SpliceProbe = func() error { return tt.probe }
			r := find(Run(context.Background(), e), "kernel splice")
			if r.Status != tt.status || !strings.Contains(r.Detail, tt.detail) {
				t.Fatalf("got %+v, want %s with %q", r, tt.status, tt.detail)
			}
			if tt.status == Warn && r.Fix == "" {
				t.Fatal("a warning without a fix")
			}
		})
	}
}
