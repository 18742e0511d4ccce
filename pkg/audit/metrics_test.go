package audit

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape fetches the handler over a real loopback HTTP server and returns
// the families.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	req.Header.Set("Accept", "text/plain")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("scrape status %d", resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// value returns the value of the series of family name whose labels are
// exactly labels ("k=v,k=v", sorted), or -1.
func value(fams map[string]*dto.MetricFamily, name, labels string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
	for _, m := range f.GetMetric() {
		var ls []string
		for _, l := range m.GetLabel() {
			ls = append(ls, l.GetName()+"="+l.GetValue())
		}
		sort.Strings(ls)
		if strings.Join(ls, ",") != labels {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	return -1
}

func TestMetricsScrape(t *testing.T) {
	log, _ := testLog(t)
	m := NewMetrics()
	l := NewLogger(log, LoggerOptions{}, NewMetricsSink(m))
	m.WatchLogger(l)
	m.SetAllowlistEntries("sb1", 17)

	for _, ev := range sampleEvents() {
		ev.Sandbox = "sb1"
		l.Emit(ev)
	}
	for range 3 {
		l.Emit(Event{Kind: KindDNS, Sandbox: "sb1", Decision: DecisionDeny, QName: "x.example", Rcode: "NXDOMAIN"})
	}
	l.Emit(Event{Kind: KindCallback, Sandbox: "sb1", Rule: "corp", Host: "api.corp.internal", Decision: DecisionAllow, LatencyMS: 12})
	l.Emit(Event{Kind: KindCallback, Sandbox: "sb1", Rule: "corp", Host: "api.corp.internal", Decision: DecisionError, LatencyMS: 2000, Reason: "timeout"})
	l.Emit(Event{Kind: KindConn, Sandbox: "sb1", Rule: "no-pypi", Decision: DecisionWouldDeny, SNI: "pypi.org", BytesUp: 100, BytesDown: 900})
	flush(t, l)
	defer l.Close()

	srv := httptest.NewServer(m.Handler()) // 127.0.0.1:0
	defer srv.Close()
	if !strings.HasPrefix(srv.URL, "http://127.0.0.1:") {
		t.Fatalf("metrics server not on loopback: %s", srv.URL)
	}
	fams := scrape(t, srv.URL+"/metrics")

	tests := []struct {
		name   string
		labels string
		want   float64
	}{
		{"sluice_decisions_total", "action=allow,rule=github-api,sandbox=sb1", 2}, // dns + http
		{"sluice_decisions_total", "action=intercept,rule=github-api,sandbox=sb1", 1},
		{"sluice_decisions_total", "action=deny,rule=,sandbox=sb1", 5}, // 1+3 dns, 1 kernel
		{"sluice_decisions_total", "action=deny,rule=no-pypi,sandbox=sb1", 1},
		{"sluice_decisions_total", "action=would_deny,rule=no-pypi,sandbox=sb1", 1},
		{"sluice_decisions_total", "action=allow,rule=goproxy,sandbox=sb1", 2},
		{"sluice_dns_queries_total", "decision=allow,rcode=NOERROR,sandbox=sb1", 1},
		{"sluice_dns_queries_total", "decision=deny,rcode=NXDOMAIN,sandbox=sb1", 4},
		{"sluice_bytes_total", "direction=up,sandbox=sb1", 1300},
		{"sluice_bytes_total", "direction=down,sandbox=sb1", 54900},
		{"sluice_proxy_request_duration_seconds", "sandbox=sb1", 1}, // one http event with a latency
		{"sluice_callback_duration_seconds", "rule=corp,sandbox=sb1", 2},
		{"sluice_callback_failures_total", "rule=corp,sandbox=sb1", 1},
		{"sluice_allowlist_entries", "sandbox=sb1", 17},
		{"sluice_audit_events_dropped_total", "", 0},
		{"sluice_audit_sink_errors_total", "", 0},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s{%s}", tt.name, tt.labels), func(t *testing.T) {
			if got := value(fams, tt.name, tt.labels); got != tt.want {
				t.Fatalf("%s{%s} = %v, want %v", tt.name, tt.labels, got, tt.want)
			}
		})
	}
	if fams["go_goroutines"] == nil {
		t.Error("runtime collector missing")
	}

	m.ForgetSandbox("sb1")
	fams = scrape(t, srv.URL+"/metrics")
	if v := value(fams, "sluice_allowlist_entries", "sandbox=sb1"); v != -1 {
		t.Fatalf("ForgetSandbox left allowlist_entries = %v", v)
	}
}

// Drops and sink errors of the watched Logger reach the scrape.
func TestMetricsDroppedAndSinkErrors(t *testing.T) {
	log, _ := testLog(t)
	m := NewMetrics()
	block := make(chan struct{})
	l := NewLogger(log, LoggerOptions{Queue: 2, SinkQueue: 1, ReportInterval: time.Hour, CloseTimeout: 100 * time.Millisecond},
		SinkFunc(func(*Event) error { <-block; return nil }),
		NewWriterSink("disk", enospcWriter{}))
	m.WatchLogger(l)
	for range 50 {
		l.Emit(Event{Kind: KindDNS})
	}
	close(block)
	flush(t, l)
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	fams := scrape(t, srv.URL)
	dropped := value(fams, "sluice_audit_events_dropped_total", "")
	if dropped <= 0 || dropped != float64(l.Dropped()) {
		t.Fatalf("audit_events_dropped_total = %v, Dropped() = %d", dropped, l.Dropped())
	}
	errs := value(fams, "sluice_audit_sink_errors_total", "")
	if errs <= 0 || errs != float64(l.SinkErrors()) {
		t.Fatalf("audit_sink_errors_total = %v, SinkErrors() = %d", errs, l.SinkErrors())
	}
	l.Close()
}

func TestMetricsServe(t *testing.T) {
	m := NewMetrics()
	m.SetAllowlistEntries("sb9", 3)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Serve(ctx, ln) }()
	fams := scrape(t, "http://"+ln.Addr().String()+"/metrics")
	if v := value(fams, "sluice_allowlist_entries", "sandbox=sb9"); v != 3 {
		t.Fatalf("allowlist_entries = %v, want 3", v)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
}
