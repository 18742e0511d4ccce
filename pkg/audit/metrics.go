package audit

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// MetricsNamespace prefixes every metric name.
const MetricsNamespace = "sluice"

// Metrics holds sluice's Prometheus metrics in a registry of its own (never
// the global one). Counters are derived from audit events by a
// MetricsSink, so components only emit events; the integrator sets the
// allowlist gauge and connects a Logger's drop counters. Safe for
// concurrent use.
//
// Series (all prefixed "sluice_"):
//
//	decisions_total{sandbox,rule,action}           dns, conn, http and kernel decisions
//	dns_queries_total{sandbox,rcode,decision}
//	bytes_total{sandbox,direction}                 direction "up" (to the internet) or "down"
//	proxy_request_duration_seconds{sandbox}        histogram of HTTP latency to response headers
//	callback_duration_seconds{sandbox,rule}        histogram of credential callback latency
//	callback_failures_total{sandbox,rule}
//	allowlist_entries{sandbox}                     kernel allowlist occupancy
//	fence_refusals_total{sandbox,fence}            work refused at a resource fence
//	audit_events_dropped_total                     events lost under pressure
//	audit_sink_errors_total                        failed sink writes
type Metrics struct {
	reg *prometheus.Registry

	decisions   *prometheus.CounterVec
	dnsQueries  *prometheus.CounterVec
	bytes       *prometheus.CounterVec
	proxyLat    *prometheus.HistogramVec
	callbackLat *prometheus.HistogramVec
	callbackErr *prometheus.CounterVec
	allowlist   *prometheus.GaugeVec
	fences      *prometheus.CounterVec

	dropped      atomic.Pointer[func() uint64]
	sinkErrors   atomic.Pointer[func() uint64]
	beforeScrape atomic.Pointer[func()]
}

// NewMetrics creates the metrics and their registry, which also carries
// the Go runtime and process collectors.
func NewMetrics() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	ns := MetricsNamespace
	m.decisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Name: "decisions_total",
		Help: "Policy decisions on DNS queries, connections, HTTP requests and kernel refusals, by sandbox, rule and action.",
	}, []string{"sandbox", "rule", "action"})
	m.dnsQueries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Name: "dns_queries_total",
		Help: "DNS queries answered for sandboxes, by response code and decision.",
	}, []string{"sandbox", "rcode", "decision"})
	m.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Name: "bytes_total",
		Help: "Bytes proxied, by sandbox and direction (up: sandbox to upstream, down: upstream to sandbox).",
	}, []string{"sandbox", "direction"})
	m.proxyLat = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: ns, Name: "proxy_request_duration_seconds",
		Help:    "Time from forwarding an intercepted HTTP request to the upstream's response headers.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"sandbox"})
	m.callbackLat = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: ns, Name: "callback_duration_seconds",
		Help:    "Latency of credential callback calls.",
		Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"sandbox", "rule"})
	m.callbackErr = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Name: "callback_failures_total",
		Help: "Credential callback calls that failed (the request was refused: fail closed).",
	}, []string{"sandbox", "rule"})
	m.allowlist = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: ns, Name: "allowlist_entries",
		Help: "Entries in the sandbox's kernel allowlist map.",
	}, []string{"sandbox"})
	m.fences = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Name: "fence_refusals_total",
		Help: "Work refused at a sandbox's resource fence (connections, upstream_connections, request_head_bytes, dns_qps).",
	}, []string{"sandbox", "fence"})
	dropped := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: ns, Name: "audit_events_dropped_total",
		Help: "Audit events dropped because a queue was full (the event queue or a sink's).",
	}, func() float64 { return load(&m.dropped) })
	sinkErrs := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: ns, Name: "audit_sink_errors_total",
		Help: "Audit sink writes that failed (for example disk full).",
	}, func() float64 { return load(&m.sinkErrors) })
	m.reg.MustRegister(m.decisions, m.dnsQueries, m.bytes, m.proxyLat, m.callbackLat, m.callbackErr, m.allowlist,
		m.fences, dropped, sinkErrs,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func load(p *atomic.Pointer[func() uint64]) float64 {
	if f := p.Load(); f != nil {
		return float64((*f)())
	}
	return 0
}

// Registry returns the registry, for callers that add their own metrics.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus exposition format, after
// running the function given to BeforeScrape.
func (m *Metrics) Handler() http.Handler {
	h := promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fn := m.beforeScrape.Load(); fn != nil {
			(*fn)()
		}
		h.ServeHTTP(w, r)
	})
}

// BeforeScrape sets a function run before every scrape, to refresh gauges
// that are cheaper to read on demand (such as allowlist occupancy).
func (m *Metrics) BeforeScrape(fn func()) { m.beforeScrape.Store(&fn) }

// Serve serves Handler at /metrics on ln until ctx is done, then shuts
// the server down (waiting up to 5s for scrapes in flight) and returns
// nil. It closes ln.
func (m *Metrics) Serve(ctx context.Context, ln net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		<-stopped
		return nil
	}
	return fmt.Errorf("serving metrics on %s: %w", ln.Addr(), err)
}

// WatchLogger makes audit_events_dropped_total and audit_sink_errors_total
// report l's counters.
func (m *Metrics) WatchLogger(l *Logger) {
	d, e := l.Dropped, l.SinkErrors
	m.dropped.Store(&d)
	m.sinkErrors.Store(&e)
}

// SetAllowlistEntries sets the allowlist occupancy of a sandbox.
func (m *Metrics) SetAllowlistEntries(sandbox string, n int) {
	m.allowlist.WithLabelValues(sandbox).Set(float64(n))
}

// ForgetSandbox removes every series of a sandbox that went away, so the
// label sets do not grow without bound.
func (m *Metrics) ForgetSandbox(sandbox string) {
	l := prometheus.Labels{"sandbox": sandbox}
	m.decisions.DeletePartialMatch(l)
	m.dnsQueries.DeletePartialMatch(l)
	m.bytes.DeletePartialMatch(l)
	m.proxyLat.DeletePartialMatch(l)
	m.callbackLat.DeletePartialMatch(l)
	m.callbackErr.DeletePartialMatch(l)
	m.allowlist.DeletePartialMatch(l)
	m.fences.DeletePartialMatch(l)
}

// MetricsSink is the Sink that turns events into metric updates.
type MetricsSink struct{ m *Metrics }

// NewMetricsSink returns a sink updating m.
func NewMetricsSink(m *Metrics) *MetricsSink { return &MetricsSink{m: m} }

// String names the sink.
func (s *MetricsSink) String() string { return "metrics" }

// WriteEvent updates the counters ev implies:
//   - dns, conn, http, kernel: decisions_total;
//   - dns: dns_queries_total;
//   - conn: bytes_total from BytesUp and BytesDown;
//   - http: proxy_request_duration_seconds from LatencyMS;
//   - callback: callback_duration_seconds, and callback_failures_total
//     when the decision is "error".
func (s *MetricsSink) WriteEvent(ev *Event) error {
	m := s.m
	switch ev.Kind {
	case KindDNS, KindConn, KindHTTP, KindKernel:
		m.decisions.WithLabelValues(ev.Sandbox, ev.Rule, ev.Decision).Inc()
	}
	switch ev.Kind {
	case KindDNS:
		m.dnsQueries.WithLabelValues(ev.Sandbox, ev.Rcode, ev.Decision).Inc()
	case KindConn:
		if ev.BytesUp > 0 {
			m.bytes.WithLabelValues(ev.Sandbox, "up").Add(float64(ev.BytesUp))
		}
		if ev.BytesDown > 0 {
			m.bytes.WithLabelValues(ev.Sandbox, "down").Add(float64(ev.BytesDown))
		}
	case KindHTTP:
		if ev.LatencyMS > 0 {
			m.proxyLat.WithLabelValues(ev.Sandbox).Observe(ev.LatencyMS / 1000)
		}
	case KindFence:
		m.fences.WithLabelValues(ev.Sandbox, ev.Reason).Inc()
	case KindCallback:
		m.callbackLat.WithLabelValues(ev.Sandbox, ev.Rule).Observe(ev.LatencyMS / 1000)
		if ev.Decision == DecisionError {
			m.callbackErr.WithLabelValues(ev.Sandbox, ev.Rule).Inc()
		}
	}
	return nil
}
