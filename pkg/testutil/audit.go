package testutil

import (
	"sync"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/audit"
)

// WaitTimeout bounds every wait in this package: long enough for a loaded
// 2-core CI machine, short enough that a hung test fails in seconds.
const WaitTimeout = 30 * time.Second

// WaitFor polls cond until it holds, and fails the test naming what it
// waited for when WaitTimeout passes first. Tests wait on conditions, never
// on fixed sleeps.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(WaitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", WaitTimeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// AuditRecorder keeps audit events in memory: the one test recorder for
// audit output. It is an audit.Emitter (for tests of components) and an
// audit.Sink (behind an audit.Logger). Safe for concurrent use.
type AuditRecorder struct {
	// mu guards the following.
	mu      sync.Mutex
	events  []audit.Event
	changed chan struct{} // closed and replaced on every event
}

var (
	_ audit.Emitter = (*AuditRecorder)(nil)
	_ audit.Sink    = (*AuditRecorder)(nil)
)

// NewAuditRecorder returns an empty recorder.
func NewAuditRecorder() *AuditRecorder { return &AuditRecorder{changed: make(chan struct{})} }

// String names the sink.
func (r *AuditRecorder) String() string { return "recorder" }

// Emit records ev.
func (r *AuditRecorder) Emit(ev audit.Event) { r.WriteEvent(&ev) }

// WriteEvent records a copy of ev.
func (r *AuditRecorder) WriteEvent(ev *audit.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, *ev)
	close(r.changed)
	r.changed = make(chan struct{})
	return nil
}

// Events returns a copy of the events recorded so far, in order.
func (r *AuditRecorder) Events() []audit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]audit.Event(nil), r.events...)
}

// Wait blocks until done accepts the recorded events and returns them. It
// fails the test after WaitTimeout. Use it whenever the events come from
// another goroutine (a server answering on a socket emits after it replies).
func (r *AuditRecorder) Wait(t testing.TB, what string, done func([]audit.Event) bool) []audit.Event {
	t.Helper()
	timeout := time.NewTimer(WaitTimeout)
	defer timeout.Stop()
	for {
		r.mu.Lock()
		evs := append([]audit.Event(nil), r.events...)
		ch := r.changed
		r.mu.Unlock()
		if done(evs) {
			return evs
		}
		select {
		case <-ch:
		case <-timeout.C:
			t.Fatalf("timed out after %v waiting for audit events: %s (%d recorded)", WaitTimeout, what, len(evs))
		}
	}
}
