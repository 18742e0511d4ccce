package testutil

import (
	"log/slog"
	"testing"

	"github.com/sluice-dev/sluice/pkg/audit"
)

func TestAuditRecorderWait(t *testing.T) {
	t.Parallel()
	r := NewAuditRecorder()
	l := audit.NewLogger(slog.New(slog.DiscardHandler), audit.LoggerOptions{}, r)
	defer l.Close()
	go func() {
		for _, q := range []string{"a.example", "b.example", "c.example"} {
			l.Emit(audit.Event{Kind: audit.KindDNS, QName: q})
		}
	}()
	evs := r.Wait(t, "three events", func(evs []audit.Event) bool { return len(evs) >= 3 })
	if evs[0].QName != "a.example" || evs[2].QName != "c.example" {
		t.Fatalf("order: %+v", evs)
	}
	r.Emit(audit.Event{Kind: audit.KindConn})
	if got := len(r.Events()); got != 4 {
		t.Fatalf("%d events after Emit, want 4", got)
	}
}
