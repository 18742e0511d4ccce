package audit

import (
	"context"
	"fmt"
	"sync"
)

// Recorder keeps events in memory. It is both an Emitter (synchronous:
// for tests of components) and a Sink (behind a Logger: for end-to-end
// tests that check the exact sequence of events). Safe for concurrent use.
type Recorder struct {
	mu      sync.Mutex
	events  []Event
	changed chan struct{} // closed and replaced on every event
}

var (
	_ Emitter = (*Recorder)(nil)
	_ Sink    = (*Recorder)(nil)
)

// NewRecorder returns an empty Recorder.
func NewRecorder() *Recorder { return &Recorder{changed: make(chan struct{})} }

// String names the sink.
func (r *Recorder) String() string { return "recorder" }

// Emit records ev.
func (r *Recorder) Emit(ev Event) { r.WriteEvent(&ev) }

// WriteEvent records a copy of ev.
func (r *Recorder) WriteEvent(ev *Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, *ev)
	close(r.changed)
	r.changed = make(chan struct{})
	return nil
}

// Events returns a copy of the events recorded so far, in order.
func (r *Recorder) Events() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.events...)
}

// Reset forgets the recorded events.
func (r *Recorder) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = nil
}

// Wait blocks until done returns true for the recorded events, or ctx
// ends. It returns the events done accepted.
func (r *Recorder) Wait(ctx context.Context, done func([]Event) bool) ([]Event, error) {
	for {
		r.mu.Lock()
		evs := append([]Event(nil), r.events...)
		ch := r.changed
		r.mu.Unlock()
		if done(evs) {
			return evs, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return evs, fmt.Errorf("waiting for audit events (%d recorded): %w", len(evs), ctx.Err())
		}
	}
}
