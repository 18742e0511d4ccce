package audit

import (
	"sync"
	"sync/atomic"
)

// Broadcast is a sink that copies events to subscribers, for the daemon's
// API stream (`sluice logs --follow` against the daemon). Each subscriber
// has its own bounded buffer: a slow reader loses events (counted on its
// Subscription), it never blocks the sink or other readers. Safe for
// concurrent use.
type Broadcast struct {
	mu     sync.RWMutex
	subs   map[*Subscription]struct{}
	closed bool
}

// Subscription is one reader of a Broadcast. Read events from C until it
// is closed (by Unsubscribe or Broadcast.Close).
type Subscription struct {
	// C delivers the events. It is closed when the subscription ends.
	C <-chan Event

	c       chan Event
	filter  func(*Event) bool
	dropped atomic.Uint64
	b       *Broadcast
	once    sync.Once
}

// NewBroadcast returns an empty Broadcast.
func NewBroadcast() *Broadcast {
	return &Broadcast{subs: map[*Subscription]struct{}{}}
}

// String names the sink.
func (b *Broadcast) String() string { return "broadcast" }

// Subscribe adds a reader with a buffer of buf events (minimum 1). filter,
// if not nil, selects the events it receives (for example one sandbox).
// On a closed Broadcast the subscription's channel is already closed.
func (b *Broadcast) Subscribe(buf int, filter func(*Event) bool) *Subscription {
	if buf < 1 {
		buf = 1
	}
	c := make(chan Event, buf)
	s := &Subscription{C: c, c: c, filter: filter, b: b}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		s.once.Do(func() { close(c) })
		return s
	}
	b.subs[s] = struct{}{}
	return s
}

// Unsubscribe ends the subscription and closes its channel. Idempotent.
func (s *Subscription) Unsubscribe() {
	s.b.mu.Lock()
	delete(s.b.subs, s)
	s.b.mu.Unlock()
	s.once.Do(func() { close(s.c) })
}

// Dropped returns how many events this subscriber missed because its
// buffer was full.
func (s *Subscription) Dropped() uint64 { return s.dropped.Load() }

// Subscribers returns the number of current subscribers.
func (b *Broadcast) Subscribers() int {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return len(b.subs)
}

// WriteEvent offers ev to every subscriber without blocking.
func (b *Broadcast) WriteEvent(ev *Event) error {
	b.mu.RLock()
	defer b.mu.RUnlock()
	for s := range b.subs {
		if s.filter != nil && !s.filter(ev) {
			continue
		}
		select {
		case s.c <- *ev:
		default:
			s.dropped.Add(1)
		}
	}
	return nil
}

// Close ends every subscription; later Subscribe calls get a closed
// channel.
func (b *Broadcast) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	for s := range b.subs {
		s.once.Do(func() { close(s.c) })
		delete(b.subs, s)
	}
	return nil
}
