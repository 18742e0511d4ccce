package audit

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// An HTTP request carrying secrets in its query, headers and body goes
// through a real loopback server that builds its audit event the way the
// proxy does. No distinctive value may appear in any output the audit
// package produces: the file, a writer, the broadcast stream, the table,
// the summary or the metrics.
func TestNoSecretInAnyOutput(t *testing.T) {
	const (
		querySecret  = "QSECRET-b71e0f0c9d"
		query2Secret = "QSECRET2-a0a0a0a0"
		headerSecret = "HSECRET-5c5c5c5c5c"
		cookieSecret = "CSECRET-7d7d7d7d"
		bodySecret   = "BSECRET-3e3e3e3e3e"
	)
	secrets := []string{querySecret, query2Secret, headerSecret, cookieSecret, bodySecret}

	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	fs, err := NewFileSink(path, FileSinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var stdout bytes.Buffer
	bc := NewBroadcast()
	sub := bc.Subscribe(16, nil)
	sum := NewSummary()
	m := NewMetrics()
	log, logBuf := testLog(t)
	l := NewLogger(log, LoggerOptions{}, fs, NewWriterSink("stdout", &stdout), bc, sum, NewMetricsSink(m))

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		io.Copy(io.Discard, r.Body)
		injected := http.Header{"Authorization": {"Bearer " + headerSecret}}
		ev := Event{
			Kind: KindHTTP, Sandbox: "agent1", PID: 42, Comm: "curl", Decision: DecisionAllow, Rule: "r",
			Host: r.Host, Method: r.Method, Path: RedactPath(r.URL.RequestURI()), Status: 200,
			Injected: HeaderNames(injected), LatencyMS: float64(time.Since(start).Microseconds()) / 1000,
		}
		ev.Ecosystem, ev.Package, ev.Version, _ = ClassifyPackage(r.Host, ev.Path)
		l.Emit(ev)
		// Also what a debugging component might log about the request.
		log.Info("request", "headers", RedactHeaders(r.Header, nil))
		w.WriteHeader(200)
	}))
	defer srv.Close()

	req, _ := http.NewRequest("POST", srv.URL+"/lodash/-/lodash-4.17.21.tgz?api_key="+querySecret+"&q="+query2Secret+"#frag", strings.NewReader(bodySecret))
	req.Header.Set("Authorization", "Bearer "+headerSecret)
	req.Header.Set("Cookie", "s="+cookieSecret)
	req.Header.Set("X-Custom", headerSecret)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	flush(t, l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	evs, err := ReadFile(path)
	if err != nil || len(evs) != 1 {
		t.Fatalf("file has %d events (%v), want 1", len(evs), err)
	}
	if evs[0].Path != "/lodash/-/lodash-4.17.21.tgz?api_key=REDACTED&q=REDACTED" || evs[0].Package != "lodash" {
		t.Fatalf("event path %q package %q", evs[0].Path, evs[0].Package)
	}
	var table, summary bytes.Buffer
	FormatTable(&table, evs)
	sum.WriteSummary(&summary)
	var streamed bytes.Buffer
	for ev := range sub.C {
		b, _ := MarshalLine(&ev)
		streamed.Write(b)
	}
	msrv := httptest.NewServer(m.Handler())
	defer msrv.Close()
	mresp, err := http.Get(msrv.URL)
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()

	outputs := map[string]string{
		"file": string(file), "stdout": stdout.String(), "broadcast": streamed.String(),
		"table": table.String(), "summary": summary.String(), "metrics": string(metrics), "slog": logBuf.String(),
	}
	for name, out := range outputs {
		if out == "" {
			t.Errorf("%s output is empty: the test would prove nothing", name)
		}
		for _, s := range secrets {
			if strings.Contains(out, s) {
				t.Errorf("%s output contains secret %q:\n%s", name, s, out)
			}
		}
	}
	if !strings.Contains(string(file), `"injected":["Authorization"]`) {
		t.Errorf("injected header name missing from event: %s", file)
	}
}
