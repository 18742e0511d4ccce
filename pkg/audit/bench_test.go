package audit

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func benchEvent() Event {
	return Event{
		Kind: KindHTTP, Sandbox: "agent1", CgroupID: 4211, PID: 3101, Comm: "curl",
		Decision: DecisionAllow, Rule: "github-api", Host: "api.github.com", Method: "GET",
		Path: "/repos/x/y/issues?page=REDACTED", Status: 200, Injected: []string{"Authorization"}, LatencyMS: 12.5,
	}
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// BenchmarkEmit is the cost Emit adds to the caller with a fast sink.
func BenchmarkEmit(b *testing.B) {
	l := NewLogger(quietLog(), LoggerOptions{}, SinkFunc(func(*Event) error { return nil }))
	defer l.Close()
	ev := benchEvent()
	ev.Time = time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		l.Emit(ev)
	}
	b.StopTimer()
	b.ReportMetric(float64(l.Dropped())/float64(b.N), "dropped/op")
}

// BenchmarkEmitParallel is Emit from many goroutines (many connections).
func BenchmarkEmitParallel(b *testing.B) {
	l := NewLogger(quietLog(), LoggerOptions{}, SinkFunc(func(*Event) error { return nil }))
	defer l.Close()
	ev := benchEvent()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			l.Emit(ev)
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(l.Dropped())/float64(b.N), "dropped/op")
}

// BenchmarkEmitBlockedSink: Emit stays cheap while a sink is stuck (every
// event is dropped and counted).
func BenchmarkEmitBlockedSink(b *testing.B) {
	release := make(chan struct{})
	l := NewLogger(quietLog(), LoggerOptions{CloseTimeout: time.Millisecond}, SinkFunc(func(*Event) error { <-release; return nil }))
	ev := benchEvent()
	b.ReportAllocs()
	for b.Loop() {
		l.Emit(ev)
	}
	b.StopTimer()
	close(release)
	l.Close()
}

// BenchmarkSinks is the per-event cost of each sink, off the caller's path.
func BenchmarkSinks(b *testing.B) {
	ev := benchEvent()
	ev.Time = time.Now()
	fs, err := NewFileSink(filepath.Join(b.TempDir(), "audit.jsonl"), FileSinkOptions{MaxBytes: 8 << 20, Keep: 2})
	if err != nil {
		b.Fatal(err)
	}
	defer fs.Close()
	for _, s := range []struct {
		name string
		sink Sink
	}{
		{"file", fs},
		{"writer", NewWriterSink("discard", io.Discard)},
		{"metrics", NewMetricsSink(NewMetrics())},
		{"summary", NewSummary()},
	} {
		b.Run(s.name, func(b *testing.B) {
			fl, _ := s.sink.(Flusher)
			b.ReportAllocs()
			n := 0
			for b.Loop() {
				s.sink.WriteEvent(&ev)
				if n++; fl != nil && n%maxBatch == 0 {
					fl.Flush()
				}
			}
		})
	}
}

// cpuTime is the CPU time (user + system) this process has used, in ns:
// unlike wall time it is not inflated by other processes on the machine.
func cpuTime() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// flushingEmitter is the Logger in BenchmarkWorkload; done flushes it so
// the sinks' work is inside the measured CPU time.
type flushingEmitter struct {
	*Logger
	b *testing.B
}

func (f flushingEmitter) done() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.Flush(ctx); err != nil {
		f.b.Error(err)
	}
}

// BenchmarkWorkload compares a proxy-like workload with audit on and off:
// one HTTP request over a loopback keep-alive connection per op, plus the
// per-request audit work (redact the path, classify a package, emit). With
// audit on, events go to a rotating file, metrics, the summary and a
// broadcast subscriber, as in the daemon, and are flushed before the
// clock stops. Compare cpu-ns/op (this process's CPU per request, robust
// to other load on the machine) as well as ns/op.
func BenchmarkWorkload(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(make([]byte, 4096))
	}))
	defer srv.Close()
	client := srv.Client()
	client.Transport.(*http.Transport).MaxIdleConnsPerHost = 64

	run := func(b *testing.B, em Emitter) {
		b.ReportAllocs()
		cpu0 := cpuTime()
		defer func() { b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op") }()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				start := time.Now()
				resp, err := client.Get(srv.URL + "/lodash/-/lodash-4.17.21.tgz?token=abc")
				if err != nil {
					b.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				ev := Event{Kind: KindHTTP, Sandbox: "agent1", PID: 1, Comm: "npm", Decision: DecisionAllow,
					Host: "registry.npmjs.org", Method: "GET", Status: resp.StatusCode}
				ev.Path = RedactPath(resp.Request.URL.RequestURI())
				ev.Ecosystem, ev.Package, ev.Version, _ = ClassifyPackage(ev.Host, ev.Path)
				ev.LatencyMS = float64(time.Since(start).Microseconds()) / 1000
				em.Emit(ev)
			}
		})
		if f, ok := em.(flushingEmitter); ok {
			f.done()
		}
	}
	b.Run("audit=off", func(b *testing.B) { run(b, Discard{}) })
	b.Run("audit=on", func(b *testing.B) {
		fs, err := NewFileSink(filepath.Join(b.TempDir(), "audit.jsonl"), FileSinkOptions{MaxBytes: 16 << 20, Keep: 2})
		if err != nil {
			b.Fatal(err)
		}
		bc := NewBroadcast()
		sub := bc.Subscribe(1024, nil)
		go func() {
			for range sub.C {
			}
		}()
		l := NewLogger(quietLog(), LoggerOptions{}, fs, NewMetricsSink(NewMetrics()), NewSummary(), bc)
		run(b, flushingEmitter{l, b})
		b.ReportMetric(float64(l.Dropped())/float64(b.N), "dropped/op")
		l.Close()
	})
}
