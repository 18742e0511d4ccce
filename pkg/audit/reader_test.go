package audit

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestDecode(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    int
		wantErr string
	}{
		{"two lines", `{"v":1,"kind":"dns","decision":"allow"}` + "\n" + `{"v":1,"kind":"conn","decision":"deny"}` + "\n", 2, ""},
		{"blank lines skipped", "\n" + `{"v":1,"kind":"dns","decision":"allow"}` + "\n\n", 1, ""},
		{"torn last line ignored", `{"v":1,"kind":"dns","decision":"allow"}` + "\n" + `{"v":1,"ki`, 1, ""},
		{"complete last line without newline", `{"v":1,"kind":"dns","decision":"allow"}`, 1, ""},
		{"malformed line", `{"v":1,"kind":"dns","decision":"allow"}` + "\n" + "not json\n" + `{"v":1}` + "\n", 1, "line 2"},
		{"wrong type", `{"v":"one"}` + "\n", 0, "line 1"},
		{"empty", "", 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := 0
			err := Decode(strings.NewReader(tt.in), func(Event) error { n++; return nil })
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			if n != tt.want {
				t.Fatalf("decoded %d events, want %d", n, tt.want)
			}
		})
	}
	stop := errors.New("stop")
	err := Decode(strings.NewReader("{}\n{}\n"), func(Event) error { return stop })
	if err != stop {
		t.Fatalf("fn error not returned as is: %v", err)
	}
}

// Round trip: what the FileSink writes, ReadFile reads back unchanged.
func TestRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	fs, err := NewFileSink(path, FileSinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	in := sampleEvents()
	for i := range in {
		if err := fs.WriteEvent(&in[i]); err != nil {
			t.Fatal(err)
		}
	}
	fs.Close()
	out, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(in) {
		t.Fatalf("read %d events, wrote %d", len(out), len(in))
	}
	for i := range in {
		a, _ := MarshalLine(&in[i])
		b, _ := MarshalLine(&out[i])
		if !bytes.Equal(a, b) {
			t.Fatalf("event %d changed:\n%s\n%s", i, a, b)
		}
	}
	if _, err := ReadFile(filepath.Join(t.TempDir(), "nope")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: err = %v", err)
	}
}

func sampleEvents() []Event {
	t0 := time.Date(2026, 11, 29, 7, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	return []Event{
		{V: 1, Time: at(0), Kind: KindDNS, Sandbox: "agent1", CgroupID: 42, PID: 101, Comm: "curl", Decision: DecisionAllow, Rule: "github-api", QName: "api.github.com", QType: "A", Rcode: "NOERROR", Answers: []string{"140.82.112.6"}},
		{V: 1, Time: at(1), Kind: KindConn, Sandbox: "agent1", CgroupID: 42, PID: 101, Comm: "curl", Decision: DecisionIntercept, Rule: "github-api", Dst: "140.82.112.6:443", Proto: "tcp", SNI: "api.github.com", BytesUp: 1200, BytesDown: 54000, DurationMS: 340},
		{V: 1, Time: at(1), Kind: KindHTTP, Sandbox: "agent1", CgroupID: 42, PID: 101, Comm: "curl", Decision: DecisionAllow, Rule: "github-api", Host: "api.github.com", Method: "GET", Path: "/user?tab=REDACTED", Status: 200, Injected: []string{"Authorization"}, LatencyMS: 87.5},
		{V: 1, Time: at(2), Kind: KindDNS, Sandbox: "agent1", CgroupID: 42, PID: 102, Comm: "python3", Decision: DecisionDeny, QName: "evil.example", QType: "A", Rcode: "NXDOMAIN", Reason: "no rule"},
		{V: 1, Time: at(3), Kind: KindKernel, Sandbox: "agent1", CgroupID: 42, PID: 103, Comm: "nc", Decision: DecisionDeny, Dst: "1.2.3.4:22", Proto: "tcp", Reason: "not in allowlist"},
		{V: 1, Time: at(4), Kind: KindHTTP, Sandbox: "agent1", CgroupID: 42, PID: 104, Comm: "npm", Decision: DecisionAllow, Rule: "npm", Host: "registry.npmjs.org", Method: "GET", Path: "/@types/node/-/node-20.11.5.tgz", Status: 200, Ecosystem: "npm", Package: "@types/node", Version: "20.11.5"},
		{V: 1, Time: at(5), Kind: KindHTTP, Sandbox: "agent2", PID: 201, Comm: "go", Decision: DecisionAllow, Rule: "goproxy", Host: "proxy.golang.org", Method: "GET", Path: "/golang.org/x/net/@v/v0.62.0.mod", Status: 200},
		{V: 1, Time: at(6), Kind: KindHTTP, Sandbox: "agent2", PID: 201, Comm: "go", Decision: DecisionAllow, Rule: "goproxy", Host: "proxy.golang.org", Method: "GET", Path: "/golang.org/x/net/@v/v0.62.0.zip", Status: 200},
		{V: 1, Time: at(7), Kind: KindHTTP, Sandbox: "agent2", PID: 202, Comm: "pip", Decision: DecisionDeny, Rule: "no-pypi", Host: "files.pythonhosted.org", Method: "GET", Path: "/packages/a/b/c/requests-2.31.0-py3-none-any.whl", Status: 403},
		{V: 1, Time: at(8), Kind: KindAudit, Reason: "sink_queue_full", Sink: "file:/var/lib/sluice/audit.jsonl", Dropped: 12},
	}
}

func TestFormatTable(t *testing.T) {
	var b bytes.Buffer
	if err := FormatTable(&b, sampleEvents()); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	t.Log("\n" + out)
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != len(sampleEvents())+1 {
		t.Fatalf("%d lines, want %d", len(lines), len(sampleEvents())+1)
	}
	for i, want := range []string{
		"TIME",
		"api.github.com A  -> 140.82.112.6",
		"api.github.com  dst=140.82.112.6:443 tcp up=1.2k down=52.7k 340ms",
		"GET api.github.com/user?tab=REDACTED  200 87.5ms injected=Authorization",
		"evil.example A  NXDOMAIN (no rule)",
		"1.2.3.4:22  tcp (not in allowlist)",
		"pkg=npm:@types/node@20.11.5",
	} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("line %d = %q, want it to contain %q", i, lines[i], want)
		}
	}
	if !strings.Contains(lines[1], "Nov 29 07:00:00.000") || !strings.Contains(lines[1], "agent1") || !strings.Contains(lines[1], "101 curl") {
		t.Errorf("line 1 lacks time, sandbox, pid or comm: %q", lines[1])
	}
	// Columns line up: DECISION starts at the same offset in every row.
	col := strings.Index(lines[0], "DECISION")
	for _, l := range lines[1:] {
		if !strings.Contains(l[col:col+10], "allow") && !strings.Contains(l[col:col+10], "deny") &&
			!strings.Contains(l[col:col+10], "intercept") && !strings.Contains(l[col:col+10], "-") {
			t.Errorf("misaligned row %q", l)
		}
	}
}

func TestPackages(t *testing.T) {
	evs := append(sampleEvents(),
		Event{Kind: KindHTTP, Sandbox: "agent2", Decision: DecisionAllow, Host: "pypi.org", Path: "/simple/requests/", Status: 200},
		Event{Kind: KindHTTP, Sandbox: "agent2", Decision: DecisionAllow, Host: "pypi.org", Path: "/simple/flask/", Status: 200},
		Event{Kind: KindHTTP, Sandbox: "agent2", Decision: DecisionWouldDeny, Host: "files.pythonhosted.org", Path: "/packages/a/b/c/requests-2.31.0-py3-none-any.whl", Status: 200},
		Event{Kind: KindHTTP, Sandbox: "agent2", Decision: DecisionAllow, Host: "registry.npmjs.org", Path: "/lodash/-/lodash-4.17.21.tgz", Status: 404},
	)
	got := Packages(evs)
	var lines []string
	for _, p := range got {
		lines = append(lines, strings.Join([]string{p.Sandbox, p.Ecosystem, p.Package, p.Version}, " ")+" x"+string(rune('0'+p.Count)))
	}
	want := []string{
		"agent1 npm @types/node 20.11.5 x1",
		"agent2 go golang.org/x/net v0.62.0 x2",
		"agent2 pypi flask  x1",
		"agent2 pypi requests 2.31.0 x1",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("Packages =\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	var b bytes.Buffer
	FormatPackages(&b, got)
	if !strings.Contains(b.String(), "golang.org/x/net") || !strings.Contains(b.String(), "ECOSYSTEM") {
		t.Fatalf("FormatPackages:\n%s", b.String())
	}
}

func TestFollowAppendsAndRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	fs, err := NewFileSink(path, FileSinkOptions{MaxBytes: 600, Keep: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	write := func(name string) {
		t.Helper()
		if err := fs.WriteEvent(&Event{V: 1, Kind: KindDNS, Decision: DecisionAllow, QName: name}); err != nil {
			t.Fatal(err)
		}
		if err := fs.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	write("before-follow.example")

	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var got []string
	done := make(chan error, 1)
	go func() {
		done <- Follow(ctx, path, 5*time.Millisecond, func(ev Event) error {
			mu.Lock()
			got = append(got, ev.QName)
			mu.Unlock()
			return nil
		})
	}()
	waitFor := func(n int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			mu.Lock()
			l := len(got)
			mu.Unlock()
			if l >= n {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("followed %d events, want %d: %v", len(got), n, got)
	}
	waitFor(1)
	// Enough events to rotate several times while following.
	for i := range 30 {
		write("e" + string(rune('a'+i%26)) + ".example")
		if i%7 == 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor(31)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{"before-follow.example"}
	for i := range 30 {
		want = append(want, "e"+string(rune('a'+i%26))+".example")
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("followed\n%v\nwant\n%v", got, want)
	}
	if len(RotatedFiles(path)) != 3 {
		t.Fatalf("expected rotation during the test, files: %v", RotatedFiles(path))
	}
}
