package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func testLog(t *testing.T) (*slog.Logger, *syncBuffer) {
	t.Helper()
	var b syncBuffer
	return slog.New(slog.NewTextHandler(&b, nil)).With("component", "audit"), &b
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// blockingWriter blocks every Write until release is closed.
type blockingWriter struct {
	release chan struct{}
	entered chan struct{}
	once    sync.Once
}

func newBlockingWriter() *blockingWriter {
	return &blockingWriter{release: make(chan struct{}), entered: make(chan struct{})}
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.entered) })
	<-w.release
	return len(p), nil
}

// enospcWriter fails like a full disk.
type enospcWriter struct{}

func (enospcWriter) Write(p []byte) (int, error) {
	return 0, &os.PathError{Op: "write", Path: "/var/lib/sluice/audit.jsonl", Err: syscall.ENOSPC}
}

func flush(t *testing.T, l *Logger) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestLoggerFanOut(t *testing.T) {
	log, _ := testLog(t)
	var a, b bytes.Buffer
	sum := NewSummary()
	l := NewLogger(log, LoggerOptions{}, NewWriterSink("a", &a), NewWriterSink("b", &b), sum)
	for i := range 100 {
		l.Emit(Event{Kind: KindConn, Decision: DecisionSplice, Host: fmt.Sprintf("h%d.example", i%3), Sandbox: "sb1"})
	}
	flush(t, l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for name, buf := range map[string]*bytes.Buffer{"a": &a, "b": &b} {
		lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
		if len(lines) != 100 {
			t.Fatalf("sink %s: got %d lines, want 100", name, len(lines))
		}
		var ev Event
		if err := json.Unmarshal([]byte(lines[0]), &ev); err != nil {
			t.Fatal(err)
		}
		if ev.V != SchemaVersion || ev.Time.IsZero() || ev.Host != "h0.example" {
			t.Fatalf("sink %s: first event %+v: want v, ts filled and host h0.example", name, ev)
		}
	}
	if got := len(sum.Hosts()); got != 3 {
		t.Fatalf("summary hosts = %d, want 3", got)
	}
	if l.Dropped() != 0 || l.SinkErrors() != 0 {
		t.Fatalf("dropped=%d errors=%d, want 0", l.Dropped(), l.SinkErrors())
	}
}

// A sink whose writer blocks forever must never block Emit, must not stall
// the other sinks, and its losses must be counted and reported.
func TestLoggerBlockedSinkNeverBlocksEmit(t *testing.T) {
	log, logBuf := testLog(t)
	bw := newBlockingWriter()
	defer close(bw.release)
	var good bytes.Buffer
	l := NewLogger(log, LoggerOptions{Queue: 16, SinkQueue: 8, ReportInterval: 20 * time.Millisecond, CloseTimeout: 300 * time.Millisecond},
		NewWriterSink("stuck", bw), NewWriterSink("good", &good))

	const n = 5000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range n {
			l.Emit(Event{Kind: KindHTTP, Decision: DecisionAllow, Method: "GET", Path: fmt.Sprintf("/%d", i)})
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Emit blocked behind a stuck sink")
	}
	<-bw.entered
	// The good sink keeps receiving while the stuck one is stuck.
	deadline := time.Now().Add(5 * time.Second)
	var stuck, goodStats SinkStats
	for time.Now().Before(deadline) {
		st := l.Stats()
		stuck, goodStats = st[0], st[1]
		if goodStats.Written+goodStats.Dropped+l.dropped.Load() >= n && stuck.Dropped > 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if stuck.Dropped == 0 {
		t.Fatalf("stuck sink dropped nothing: %+v", stuck)
	}
	if goodStats.Written == 0 {
		t.Fatalf("good sink starved: %+v", goodStats)
	}
	if l.Dropped() == 0 {
		t.Fatal("Dropped() = 0 with a stuck sink")
	}
	// The periodic report reaches the log and the good sink.
	deadline = time.Now().Add(5 * time.Second)
	for !strings.Contains(logBuf.String(), "audit sink falling behind") && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if !strings.Contains(logBuf.String(), "sink=stuck") {
		t.Fatalf("no drop report for the stuck sink in log:\n%s", logBuf.String())
	}
	start := time.Now()
	err := l.Close()
	if err == nil || !strings.Contains(err.Error(), "stuck") {
		t.Fatalf("Close() = %v, want an error naming the stuck sink", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatalf("Close waited %s for a stuck sink", time.Since(start))
	}
	if !strings.Contains(good.String(), `"kind":"audit"`) || !strings.Contains(good.String(), `"sink":"stuck"`) {
		t.Fatalf("good sink did not receive a KindAudit report about the stuck sink; close: %v; good: %.300s", err, good.String()[max(0, good.Len()-300):])
	}
	// Emit after Close drops, never panics or blocks.
	before := l.Dropped()
	l.Emit(Event{Kind: KindDNS})
	if l.Dropped() != before+1 {
		t.Fatal("Emit after Close was not counted as dropped")
	}
}

// Emit itself drops and counts when the main queue is full.
func TestLoggerQueueFullCounts(t *testing.T) {
	log, logBuf := testLog(t)
	block := make(chan struct{})
	entered := make(chan struct{})
	var once sync.Once
	l := NewLogger(log, LoggerOptions{Queue: 4, SinkQueue: 1, ReportInterval: 10 * time.Millisecond},
		SinkFunc(func(*Event) error { once.Do(func() { close(entered) }); <-block; return nil }))
	l.Emit(Event{Kind: KindDNS})
	<-entered
	for range 100 {
		l.Emit(Event{Kind: KindDNS})
	}
	if l.dropped.Load() == 0 {
		t.Fatal("a full queue dropped nothing")
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logBuf.String(), "queue full") && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if !strings.Contains(logBuf.String(), "audit events dropped: queue full") {
		t.Fatalf("no queue-full report in log:\n%s", logBuf.String())
	}
	close(block)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

// A failing writer (disk full) is counted, reported, and does not stop
// later events from being attempted.
func TestLoggerSinkErrorsCounted(t *testing.T) {
	log, logBuf := testLog(t)
	var good bytes.Buffer
	l := NewLogger(log, LoggerOptions{ReportInterval: time.Hour}, NewWriterSink("disk", enospcWriter{}), NewWriterSink("good", &good))
	for range 10 {
		l.Emit(Event{Kind: KindConn, Decision: DecisionDeny})
	}
	flush(t, l)
	if got := l.SinkErrors(); got != 10 {
		t.Fatalf("SinkErrors() = %d, want 10", got)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// Close reports the final counts.
	out := logBuf.String()
	if !strings.Contains(out, "sink=disk") || !strings.Contains(out, "errors=10") || !strings.Contains(out, "no space left on device") {
		t.Fatalf("final report missing sink errors:\n%s", out)
	}
	if !strings.Contains(good.String(), `"reason":"sink_error","sink_errors":10,"sink":"disk"`) {
		t.Fatalf("good sink lacks the sink_error report:\n%s", good.String())
	}
}

func TestFileSinkRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	fs, err := NewFileSink(path, FileSinkOptions{MaxBytes: 1000, Keep: 3})
	if err != nil {
		t.Fatal(err)
	}
	ev := Event{V: 1, Time: time.Unix(1700000000, 0).UTC(), Kind: KindDNS, Decision: DecisionAllow, QName: "example.com", QType: "A", Rcode: "0"}
	line, _ := MarshalLine(&ev)
	perFile := 1000 / len(line)
	total := perFile*5 + 1 // enough to rotate five times: only 3 kept
	for i := range total {
		ev.Rcode = fmt.Sprint(i % 10)
		if err := fs.WriteEvent(&ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := fs.Close(); err != nil {
		t.Fatal(err)
	}
	files := RotatedFiles(path)
	want := []string{path, path + ".1", path + ".2", path + ".3"}
	if strings.Join(files, ",") != strings.Join(want, ",") {
		t.Fatalf("files = %v, want %v", files, want)
	}
	if _, err := os.Stat(path + ".4"); err == nil {
		t.Fatal("path.4 kept beyond Keep=3")
	}
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > 1000 {
			t.Fatalf("%s is %d bytes, over MaxBytes", f, st.Size())
		}
		if st.Mode().Perm() != 0o600 {
			t.Fatalf("%s mode %v, want 0600", f, st.Mode().Perm())
		}
		evs, err := ReadFile(f)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if len(evs) == 0 {
			t.Fatalf("%s is empty", f)
		}
	}
	// The newest file holds the last event; .1 is full.
	evs, _ := ReadFile(path)
	if len(evs) != 1 {
		t.Fatalf("current file has %d events, want 1", len(evs))
	}
	evs1, _ := ReadFile(path + ".1")
	if len(evs1) != perFile {
		t.Fatalf("%s has %d events, want %d", path+".1", len(evs1), perFile)
	}
	// Reopening appends.
	fs2, err := NewFileSink(path, FileSinkOptions{MaxBytes: 1000, Keep: 3})
	if err != nil {
		t.Fatal(err)
	}
	if err := fs2.WriteEvent(&ev); err != nil {
		t.Fatal(err)
	}
	fs2.Close()
	evs, _ = ReadFile(path)
	if len(evs) != 2 {
		t.Fatalf("after reopen current file has %d events, want 2", len(evs))
	}
}

func TestFileSinkOpenError(t *testing.T) {
	_, err := NewFileSink(filepath.Join(t.TempDir(), "missing", "audit.jsonl"), FileSinkOptions{})
	if err == nil || !strings.Contains(err.Error(), "opening audit file") || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err = %v, want opening audit file: ... not exist", err)
	}
}

func TestBroadcastSlowReaderDrops(t *testing.T) {
	b := NewBroadcast()
	fast := b.Subscribe(100, nil)
	slow := b.Subscribe(2, nil)
	only := b.Subscribe(100, func(ev *Event) bool { return ev.Sandbox == "sb2" })
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 50 {
			sb := "sb1"
			if i%10 == 0 {
				sb = "sb2"
			}
			b.WriteEvent(&Event{Kind: KindDNS, Sandbox: sb})
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("a slow subscriber blocked the broadcast")
	}
	if len(fast.C) != 50 || fast.Dropped() != 0 {
		t.Fatalf("fast: %d queued, %d dropped; want 50, 0", len(fast.C), fast.Dropped())
	}
	if len(slow.C) != 2 || slow.Dropped() != 48 {
		t.Fatalf("slow: %d queued, %d dropped; want 2, 48", len(slow.C), slow.Dropped())
	}
	if len(only.C) != 5 {
		t.Fatalf("filtered: %d queued, want 5", len(only.C))
	}
	slow.Unsubscribe()
	slow.Unsubscribe()
	if b.Subscribers() != 2 {
		t.Fatalf("subscribers = %d, want 2", b.Subscribers())
	}
	n := 0
	for range slow.C {
		n++
	}
	if n != 2 {
		t.Fatalf("drained %d from unsubscribed channel, want 2", n)
	}
	b.Close()
	for range fast.C {
	}
	late := b.Subscribe(1, nil)
	if _, ok := <-late.C; ok {
		t.Fatal("subscription after Close is open")
	}
	if err := b.WriteEvent(&Event{}); err != nil {
		t.Fatal(err)
	}
}

func TestSummary(t *testing.T) {
	s := NewSummary()
	evs := []Event{
		{Kind: KindDNS, Decision: DecisionAllow, QName: "api.github.com"}, // not counted
		{Kind: KindConn, Decision: DecisionIntercept, SNI: "api.github.com"},
		{Kind: KindHTTP, Decision: DecisionAllow, Host: "api.github.com", Method: "GET", Path: "/user"},
		{Kind: KindHTTP, Decision: DecisionAllow, Host: "api.github.com", Method: "GET", Path: "/user"},
		{Kind: KindHTTP, Decision: DecisionDeny, Host: "api.github.com", Method: "DELETE", Path: "/repos/x", Rule: "github-api"},
		{Kind: KindConn, Decision: DecisionSplice, SNI: "raw.githubusercontent.com"},
		{Kind: KindDNS, Decision: DecisionDeny, QName: "evil.example", Reason: "no rule"},
		{Kind: KindDNS, Decision: DecisionDeny, QName: "evil.example", Reason: "no rule"},
		{Kind: KindDNS, Decision: DecisionDeny, QName: "evil.example", Reason: "no rule"},
		{Kind: KindKernel, Decision: DecisionDeny, Dst: "1.2.3.4:443", Reason: "not in allowlist"},
		{Kind: KindConn, Decision: DecisionWouldDeny, SNI: "pypi.org", Rule: "no-pypi"},
		{Kind: KindAudit, Dropped: 3},
	}
	for i := range evs {
		s.WriteEvent(&evs[i])
	}
	var b bytes.Buffer
	if err := s.WriteSummary(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	t.Log("\n" + out)
	for _, want := range []string{
		"sluice: 3 allowed, 5 denied, 1 would be denied (audit mode) across 5 hosts",
		"evil.example ", "api.github.com ",
		"DELETE api.github.com/repos/x", "github-api",
		"1.2.3.4:443", "not in allowlist",
		"pypi.org", "conn (would deny)", "no-pypi",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q", want)
		}
	}
	top := s.TopRefusals(1)
	if len(top) != 1 || top[0].Target != "evil.example" || top[0].Count != 3 {
		t.Fatalf("top refusal = %+v, want evil.example x3", top)
	}
	hosts := s.Hosts()
	if hosts[0].Host != "api.github.com" || hosts[0].Allowed != 2 || hosts[0].Denied != 1 {
		t.Fatalf("first host = %+v, want api.github.com 2 allowed 1 denied", hosts[0])
	}
	if lines := strings.Count(out, "\n"); lines > 24 {
		t.Fatalf("summary is %d lines, more than a screen", lines)
	}
}

func TestSummaryFitsOneScreen(t *testing.T) {
	s := NewSummary()
	for i := range 200 {
		s.WriteEvent(&Event{Kind: KindConn, Decision: DecisionDeny, SNI: fmt.Sprintf("host%03d.example", i), Rule: "r"})
	}
	var b bytes.Buffer
	s.WriteSummary(&b)
	if lines := strings.Count(b.String(), "\n"); lines > 24 {
		t.Fatalf("summary of 200 hosts is %d lines:\n%s", lines, b.String())
	}
	if !strings.Contains(b.String(), "... 190 more hosts") {
		t.Fatalf("no elision line:\n%s", b.String())
	}
}

var _ io.Closer = (*FileSink)(nil)

// Emit from many goroutines while Close runs: no panic, no deadlock, and
// every event is either written or counted as dropped (up to the events
// whose Emit raced past the final drain).
func TestLoggerEmitDuringClose(t *testing.T) {
	log, _ := testLog(t)
	var n sync.WaitGroup
	var mu sync.Mutex
	written := 0
	l := NewLogger(log, LoggerOptions{Queue: 64, SinkQueue: 64}, SinkFunc(func(ev *Event) error {
		if ev.Kind == KindDNS { // not the KindAudit reports
			mu.Lock()
			written++
			mu.Unlock()
		}
		return nil
	}))
	const goroutines, each = 8, 2000
	for range goroutines {
		n.Add(1)
		go func() {
			defer n.Done()
			for range each {
				l.Emit(Event{Kind: KindDNS})
			}
		}()
	}
	time.Sleep(time.Millisecond)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	n.Wait()
	mu.Lock()
	defer mu.Unlock()
	total := uint64(written) + l.Dropped()
	if total > goroutines*each || total < goroutines*each-goroutines {
		t.Fatalf("written %d + dropped %d = %d, want %d (± racing emits)", written, l.Dropped(), total, goroutines*each)
	}
}
