package audit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Sink receives events from a Logger. WriteEvent is called from one
// goroutine per sink, never concurrently for the same sink, and ev must not
// be retained after it returns. A sink may block (a full disk, a slow
// reader): only its own queue fills up and drops; traffic never waits.
// A sink that also implements io.Closer is closed by Logger.Close.
type Sink interface {
	WriteEvent(ev *Event) error
}

// SinkFunc adapts a function to a Sink.
type SinkFunc func(ev *Event) error

// WriteEvent calls f(ev).
func (f SinkFunc) WriteEvent(ev *Event) error { return f(ev) }

// LoggerOptions tune a Logger. Zero values select the defaults.
type LoggerOptions struct {
	// Queue is the capacity of the queue Emit writes to (default 4096
	// events; an Event is about 456 bytes).
	Queue int
	// SinkQueue is the capacity of each sink's own queue (default 2048).
	SinkQueue int
	// ReportInterval is how often drops and sink errors are reported, as a
	// warning on the slog.Logger and as a KindAudit event (default 10s).
	ReportInterval time.Duration
	// BatchDelay is how long the Logger lets events accumulate between
	// deliveries while busy (default 2ms). Longer batches cost the
	// emitting goroutines fewer wake-ups; the delay bounds how late an
	// event reaches the sinks.
	BatchDelay time.Duration
	// CloseTimeout bounds how long Close waits for sinks to drain
	// (default 5s). A sink still blocked after it is abandoned.
	CloseTimeout time.Duration
}

// Logger is an asynchronous Emitter that fans events out to sinks. Emit
// never blocks: when the queue is full the event is dropped and counted.
// Each sink has its own bounded queue and goroutine, so one blocked sink
// neither blocks Emit nor starves the other sinks. Safe for concurrent use;
// Close must be called to flush and release the goroutines.
type Logger struct {
	log  *slog.Logger
	opts LoggerOptions

	queue    chan Event
	wake     chan struct{}
	stop     chan struct{}
	done     chan struct{}
	closed   atomic.Bool
	closeMu  sync.Mutex
	closeErr error
	isClosed bool

	accepted   atomic.Uint64 // events taken by Emit
	dispatched atomic.Uint64 // events handed to every sink's queue (or dropped there)
	dropped    atomic.Uint64 // events dropped by Emit (queue full or closed)

	sinks []*sinkWorker
}

type sinkWorker struct {
	name     string
	sink     Sink
	queue    chan Event
	enqueued atomic.Uint64
	written  atomic.Uint64 // processed, successfully or not
	dropped  atomic.Uint64
	errors   atomic.Uint64
	lastErr  atomic.Pointer[string]
	done     chan struct{}
}

// SinkStats are the counters of one sink.
type SinkStats struct {
	Name    string
	Written uint64 // events processed (including failed writes)
	Dropped uint64 // events dropped because the sink's queue was full
	Errors  uint64 // failed writes
}

var _ Emitter = (*Logger)(nil)

// NewLogger starts a Logger that fans out to sinks. log receives warnings
// about drops and sink errors (never event contents); it must not be nil.
func NewLogger(log *slog.Logger, opts LoggerOptions, sinks ...Sink) *Logger {
	if opts.Queue <= 0 {
		opts.Queue = 4096
	}
	if opts.SinkQueue <= 0 {
		opts.SinkQueue = 2048
	}
	if opts.ReportInterval <= 0 {
		opts.ReportInterval = 10 * time.Second
	}
	if opts.BatchDelay <= 0 {
		opts.BatchDelay = 2 * time.Millisecond
	}
	if opts.CloseTimeout <= 0 {
		opts.CloseTimeout = 5 * time.Second
	}
	l := &Logger{
		log:   log,
		opts:  opts,
		queue: make(chan Event, opts.Queue),
		wake:  make(chan struct{}, 1),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	for i, s := range sinks {
		w := &sinkWorker{
			name:  sinkName(i, s),
			sink:  s,
			queue: make(chan Event, opts.SinkQueue),
			done:  make(chan struct{}),
		}
		l.sinks = append(l.sinks, w)
		go w.run()
	}
	go l.dispatch()
	return l
}

func sinkName(i int, s Sink) string {
	if n, ok := s.(fmt.Stringer); ok {
		return n.String()
	}
	return fmt.Sprintf("sink%d(%T)", i, s)
}

// Emit queues ev for the sinks without blocking. A zero V or Time is
// filled in. When the queue is full, or after Close, ev is dropped and
// counted in Dropped.
func (l *Logger) Emit(ev Event) {
	if l.closed.Load() {
		l.dropped.Add(1)
		return
	}
	if ev.V == 0 {
		ev.V = SchemaVersion
	}
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	select {
	case l.queue <- ev:
		l.accepted.Add(1)
		if len(l.queue) > cap(l.queue)/2 {
			select {
			case l.wake <- struct{}{}:
			default:
			}
		}
	default:
		l.dropped.Add(1)
	}
}

// Dropped returns the number of events lost so far: dropped by Emit
// because the queue was full, plus those dropped at a full sink queue
// (counted once per sink).
func (l *Logger) Dropped() uint64 {
	n := l.dropped.Load()
	for _, w := range l.sinks {
		n += w.dropped.Load()
	}
	return n
}

// SinkErrors returns the number of failed sink writes so far.
func (l *Logger) SinkErrors() uint64 {
	var n uint64
	for _, w := range l.sinks {
		n += w.errors.Load()
	}
	return n
}

// Stats returns the counters of every sink, in the order given to NewLogger.
func (l *Logger) Stats() []SinkStats {
	out := make([]SinkStats, 0, len(l.sinks))
	for _, w := range l.sinks {
		out = append(out, SinkStats{Name: w.name, Written: w.written.Load(), Dropped: w.dropped.Load(), Errors: w.errors.Load()})
	}
	return out
}

// Flush waits until every event emitted before the call has been processed
// (written, failed or dropped) by every sink, or ctx is done.
func (l *Logger) Flush(ctx context.Context) error {
	target := l.accepted.Load()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	wait := func(ok func() bool) error {
		for !ok() {
			select {
			case <-ctx.Done():
				return fmt.Errorf("flushing audit log: %w", ctx.Err())
			case <-l.done:
				if !ok() {
					return errors.New("flushing audit log: logger closed")
				}
			case <-tick.C:
			}
		}
		return nil
	}
	if err := wait(func() bool { return l.dispatched.Load() >= target }); err != nil {
		return err
	}
	for _, w := range l.sinks {
		want := w.enqueued.Load()
		if err := wait(func() bool { return w.written.Load() >= want }); err != nil {
			return fmt.Errorf("%w (sink %s)", err, w.name)
		}
	}
	return nil
}

// Close stops accepting events, delivers those queued, reports the final
// drop and error counts, closes the sinks that are io.Closers and returns.
// It waits at most CloseTimeout for sinks; a sink still blocked then is
// abandoned and named in the error. Close is idempotent.
func (l *Logger) Close() error {
	l.closeMu.Lock()
	defer l.closeMu.Unlock()
	if l.isClosed {
		return l.closeErr
	}
	l.isClosed = true
	l.closed.Store(true)
	close(l.stop)
	<-l.done
	// An Emit that raced with Close may have queued after the final
	// drain: count it as dropped.
	for len(l.queue) > 0 {
		<-l.queue
		l.dropped.Add(1)
		l.accepted.Add(^uint64(0))
	}
	ctx, cancel := context.WithTimeout(context.Background(), l.opts.CloseTimeout)
	defer cancel()
	var errs []error
	for _, w := range l.sinks {
		select {
		case <-w.done:
		case <-ctx.Done():
			select {
			case <-w.done:
			default:
				errs = append(errs, fmt.Errorf("closing audit sink %s: still blocked after %s, abandoned", w.name, l.opts.CloseTimeout))
				continue
			}
		}
		if c, ok := w.sink.(io.Closer); ok {
			if err := c.Close(); err != nil {
				errs = append(errs, fmt.Errorf("closing audit sink %s: %w", w.name, err))
			}
		}
	}
	l.closeErr = errors.Join(errs...)
	return l.closeErr
}

func (l *Logger) dispatch() {
	defer close(l.done)
	tick := time.NewTicker(l.opts.ReportInterval)
	defer tick.Stop()
	batch := time.NewTimer(0)
	defer batch.Stop()
	var rep reporter
	for {
		// Idle: block until an event arrives.
		select {
		case ev := <-l.queue:
			l.fanout(&ev)
		case <-tick.C:
			l.report(&rep)
			continue
		case <-l.stop:
			l.shutdown(&rep)
			return
		}
		// Busy: drain, then let events accumulate for BatchDelay so that
		// Emit finds no receiver to wake (a handoff costs the caller a
		// goroutine wake-up). wake cuts the wait short when the queue is
		// half full.
		for {
			l.drain()
			batch.Reset(l.opts.BatchDelay)
			select {
			case <-batch.C:
			case <-l.wake:
				batch.Stop() // Go 1.23+ timers: no stale tick after Stop or Reset
			case <-tick.C:
				l.report(&rep)
			case <-l.stop:
				l.shutdown(&rep)
				return
			}
			if len(l.queue) == 0 {
				break
			}
		}
	}
}

// drain hands every queued event to the sinks.
func (l *Logger) drain() {
	for {
		select {
		case ev := <-l.queue:
			l.fanout(&ev)
		default:
			return
		}
	}
}

func (l *Logger) shutdown(rep *reporter) {
	// Emit no longer queues (closed is set before stop): drain.
	l.drain()
	l.report(rep)
	// A report still waiting for room gets a short, bounded wait: a sink
	// that is merely busy takes it, a stuck one cannot hold Close up.
	if len(rep.pending) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), min(100*time.Millisecond, l.opts.CloseTimeout/4))
		for _, w := range l.sinks {
		pending:
			for _, ev := range rep.pending[w] {
				select {
				case w.queue <- ev:
					w.enqueued.Add(1)
				case <-ctx.Done():
					break pending
				}
			}
		}
		cancel()
	}
	for _, w := range l.sinks {
		close(w.queue)
	}
}

func (l *Logger) fanout(ev *Event) {
	for _, w := range l.sinks {
		w.offer(ev)
	}
	l.dispatched.Add(1)
}

func (w *sinkWorker) offer(ev *Event) {
	select {
	case w.queue <- *ev:
		w.enqueued.Add(1)
	default:
		w.dropped.Add(1)
	}
}

// Flusher is implemented by sinks that buffer: the Logger calls Flush
// whenever the sink's queue runs empty, so writes are batched under load
// and prompt when idle.
type Flusher interface {
	Flush() error
}

// maxBatch bounds how many events a sink buffers before a Flush.
const maxBatch = 512

func (w *sinkWorker) run() {
	defer close(w.done)
	fl, _ := w.sink.(Flusher)
	var pending, pendingOK uint64
	// One Event for the worker's life: WriteEvent takes a pointer, which
	// would move an Event declared in the loop to the heap once per event.
	// Sinks do not retain ev, so reusing it is safe.
	var ev Event
	for {
		var ok bool
		ev, ok = <-w.queue
		if ok {
			if err := w.sink.WriteEvent(&ev); err != nil {
				w.fail(err, 1)
			} else {
				pendingOK++
			}
			pending++
			if len(w.queue) > 0 && pending < maxBatch {
				continue
			}
		}
		// Queue empty (or closed): flush the batch.
		if fl != nil && pendingOK > 0 {
			if err := fl.Flush(); err != nil {
				w.fail(err, pendingOK)
			}
		}
		w.written.Add(pending)
		pending, pendingOK = 0, 0
		if !ok {
			return
		}
	}
}

func (w *sinkWorker) fail(err error, n uint64) {
	w.errors.Add(n)
	msg := err.Error()
	w.lastErr.Store(&msg)
}

// reporter remembers the counts at the previous report.
type reporter struct {
	dropped    uint64
	sinkDrops  map[string]uint64
	sinkErrors map[string]uint64
	// pending holds, per sink, the reports that found its queue full (the
	// newest maxPendingReports); they are offered again, oldest first, at
	// the next report and at Close.
	pending map[*sinkWorker][]Event
}

// report logs and emits the drops and sink errors since the last report.
// It runs on the dispatch goroutine, so its events bypass Emit's queue and
// are never lost to the very pressure they report: a report that finds a
// sink's queue full waits in r.pending (bounded) for the next report.
func (l *Logger) report(r *reporter) {
	if r.sinkDrops == nil {
		r.sinkDrops = map[string]uint64{}
		r.sinkErrors = map[string]uint64{}
		r.pending = map[*sinkWorker][]Event{}
	}
	for w, evs := range r.pending {
		for len(evs) > 0 {
			select {
			case w.queue <- evs[0]:
				w.enqueued.Add(1)
				evs = evs[1:]
				continue
			default:
			}
			break
		}
		if len(evs) == 0 {
			delete(r.pending, w)
		} else {
			r.pending[w] = evs
		}
	}
	now := time.Now()
	if d := l.dropped.Load(); d != r.dropped {
		delta := d - r.dropped
		r.dropped = d
		l.log.Warn("audit events dropped: queue full", "dropped", delta, "total", d)
		l.fanoutReport(r, &Event{V: SchemaVersion, Time: now, Kind: KindAudit, Reason: "queue_full", Dropped: delta})
	}
	for _, w := range l.sinks {
		d, e := w.dropped.Load(), w.errors.Load()
		dd, de := d-r.sinkDrops[w.name], e-r.sinkErrors[w.name]
		if dd == 0 && de == 0 {
			continue
		}
		r.sinkDrops[w.name], r.sinkErrors[w.name] = d, e
		attrs := []any{"sink", w.name, "dropped", dd, "errors", de}
		reason := "sink_queue_full"
		if de > 0 {
			reason = "sink_error"
			if m := w.lastErr.Load(); m != nil {
				attrs = append(attrs, "last_error", *m)
			}
		}
		l.log.Warn("audit sink falling behind", attrs...)
		l.fanoutReport(r, &Event{V: SchemaVersion, Time: now, Kind: KindAudit, Reason: reason, Sink: w.name, Dropped: dd, SinkErrors: de})
	}
}

// maxPendingReports bounds the reports kept per sink while its queue is full.
const maxPendingReports = 16

// fanoutReport offers a report to every sink. A report that finds a full
// queue is not counted as dropped (counting it would report itself again):
// it waits in r.pending and is offered again at the next report, so a sink
// that was only busy still receives it.
func (l *Logger) fanoutReport(r *reporter, ev *Event) {
	for _, w := range l.sinks {
		select {
		case w.queue <- *ev:
			w.enqueued.Add(1)
		default:
			q := append(r.pending[w], *ev)
			if len(q) > maxPendingReports {
				q = q[len(q)-maxPendingReports:]
			}
			r.pending[w] = q
		}
	}
}
