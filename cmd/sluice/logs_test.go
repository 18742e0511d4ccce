package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/daemon"
	"github.com/sluice-dev/sluice/pkg/defaults"
	"github.com/sluice-dev/sluice/pkg/testutil"
)

// writeAuditLog writes evs as a JSON-lines file the way the daemon does.
func writeAuditLog(t *testing.T, evs []audit.Event) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	writeAuditLogTo(t, path, evs)
	return path
}

func writeAuditLogTo(t *testing.T, path string, evs []audit.Event) {
	t.Helper()
	fs, err := audit.NewFileSink(path, audit.FileSinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range evs {
		if err := fs.WriteEvent(&evs[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := fs.Close(); err != nil {
		t.Fatal(err)
	}
}

func logEvents() []audit.Event {
	t0 := time.Date(2026, 11, 29, 7, 0, 0, 0, time.UTC)
	return []audit.Event{
		{V: 1, Time: t0, Kind: audit.KindDNS, Sandbox: "agent1", PID: 11, Comm: "curl", Decision: audit.DecisionAllow, Rule: "gh", QName: "api.github.com", QType: "A", Answers: []string{"140.82.112.6"}},
		{V: 1, Time: t0.Add(time.Second), Kind: audit.KindHTTP, Sandbox: "agent1", PID: 11, Comm: "curl", Decision: audit.DecisionDeny, Rule: "gh", Host: "api.github.com", Method: "DELETE", Path: "/repos/x?force=REDACTED", Status: 403},
		{V: 1, Time: t0.Add(2 * time.Second), Kind: audit.KindKernel, Sandbox: "agent2", PID: 22, Comm: "nc", Decision: audit.DecisionDeny, Dst: "1.2.3.4:22", Reason: "not_allowed"},
		{V: 1, Time: t0.Add(3 * time.Second), Kind: audit.KindHTTP, Sandbox: "agent1", PID: 12, Comm: "npm", Decision: audit.DecisionAllow, Host: "registry.npmjs.org", Method: "GET", Path: "/lodash/-/lodash-4.17.21.tgz", Status: 200},
		{V: 1, Time: t0.Add(4 * time.Second), Kind: audit.KindHTTP, Sandbox: "agent2", PID: 23, Comm: "go", Decision: audit.DecisionAllow, Host: "goproxy.mirror.internal", Method: "GET", Path: "/github.com/!burnt!sushi/toml/@v/v1.3.2.zip", Status: 200},
	}
}

func TestLogsCommand(t *testing.T) {
	path := writeAuditLog(t, logEvents())
	tests := []struct {
		name     string
		args     []string
		wantCode int
		want     []string // substrings of stdout
		notWant  []string
		wantErr  string // substring of stderr
	}{
		{
			name: "table, all sandboxes",
			args: []string{"logs", "--file", path},
			want: []string{"TIME", "SANDBOX", "PID", "COMM", "api.github.com A  -> 140.82.112.6", "DELETE api.github.com/repos/x?force=REDACTED  403",
				"1.2.3.4:22", "nc", "agent2"},
		},
		{
			name:    "table, one sandbox",
			args:    []string{"logs", "agent1", "--file", path},
			want:    []string{"api.github.com", "npm"},
			notWant: []string{"agent2", "1.2.3.4:22"},
		},
		{
			name:    "json",
			args:    []string{"logs", "agent2", "--file", path, "--json"},
			want:    []string{`"kind":"kernel"`, `"comm":"nc"`, `"dst":"1.2.3.4:22"`},
			notWant: []string{"TIME", "agent1"},
		},
		{
			name:    "packages",
			args:    []string{"logs", "--file", path, "--packages"},
			want:    []string{"ECOSYSTEM", "npm", "lodash", "4.17.21", "go", "github.com/BurntSushi/toml", "v1.3.2"},
			notWant: []string{"api.github.com"},
		},
		{
			name:    "packages, one sandbox",
			args:    []string{"logs", "agent1", "--file", path, "--packages"},
			want:    []string{"lodash"},
			notWant: []string{"BurntSushi"},
		},
		{
			name:     "missing file",
			args:     []string{"logs", "--file", filepath.Join(t.TempDir(), "none.jsonl")},
			wantCode: 1,
			wantErr:  "no audit log at",
		},
		{
			name:     "packages with follow",
			args:     []string{"logs", "--file", path, "--packages", "--follow"},
			wantCode: 1,
			wantErr:  "cannot be combined with --follow",
		},
		{
			name:     "too many arguments",
			args:     []string{"logs", "a", "b", "--file", path},
			wantCode: 1,
			wantErr:  "accepts at most 1 arg",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := execute(tt.args, strings.NewReader(""), &stdout, &stderr)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr: %s", code, tt.wantCode, stderr.String())
			}
			if tt.wantErr != "" && !strings.Contains(stderr.String(), tt.wantErr) {
				t.Fatalf("stderr %q lacks %q", stderr.String(), tt.wantErr)
			}
			for _, w := range tt.want {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("stdout lacks %q:\n%s", w, stdout.String())
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(stdout.String(), w) {
					t.Errorf("stdout has %q:\n%s", w, stdout.String())
				}
			}
		})
	}
}

func TestLogsPackagesJSON(t *testing.T) {
	path := writeAuditLog(t, logEvents())
	var stdout, stderr bytes.Buffer
	if code := execute([]string{"logs", "--file", path, "--packages", "--json"}, strings.NewReader(""), &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var pkgs []audit.PackageFetch
	if err := json.Unmarshal(stdout.Bytes(), &pkgs); err != nil {
		t.Fatalf("%v:\n%s", err, stdout.String())
	}
	if len(pkgs) != 2 || pkgs[0].Package != "lodash" || pkgs[1].Package != "github.com/BurntSushi/toml" {
		t.Fatalf("packages = %+v", pkgs)
	}
}

func TestLogsFollow(t *testing.T) {
	evs := logEvents()
	path := writeAuditLog(t, evs[:1])
	var stdout, stderr testutil.SyncBuffer
	o := &rootOptions{stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr}
	root := newRootCmd(o)
	root.SetArgs([]string{"logs", "agent1", "--file", path, "--follow", "--json", "--poll", "5ms"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()

	wait := func(substr string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(stdout.String(), substr) {
			if time.Now().After(deadline) {
				t.Fatalf("follow output lacks %q:\n%s", substr, stdout.String())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	wait(`"qname":"api.github.com"`)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(evs); i++ {
		b, _ := audit.MarshalLine(&evs[i])
		f.Write(b)
	}
	f.Close()
	wait(`"path":"/lodash/-/lodash-4.17.21.tgz"`)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("--follow did not stop when its context ended")
	}
	if strings.Contains(stdout.String(), "agent2") {
		t.Fatalf("follow printed another sandbox's events:\n%s", stdout.String())
	}
	if n := strings.Count(stdout.String(), "\n"); n != 3 {
		t.Fatalf("followed %d lines, want 3:\n%s", n, stdout.String())
	}
}

// --all reads the rotated files too, oldest first.
func TestLogsAllRotated(t *testing.T) {
	evs := logEvents()
	path := writeAuditLog(t, evs[3:])
	// Simulate two rotations: .2 is older than .1.
	for i, ev := range [][]audit.Event{evs[1:3], evs[:1]} {
		var b []byte
		for j := range ev {
			l, _ := audit.MarshalLine(&ev[j])
			b = append(b, l...)
		}
		if err := os.WriteFile(path+"."+string(rune('1'+i)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var stdout, stderr bytes.Buffer
	if code := execute([]string{"logs", "--file", path, "--json"}, strings.NewReader(""), &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if n := strings.Count(stdout.String(), "\n"); n != 2 {
		t.Fatalf("without --all: %d events, want 2 (current file only)", n)
	}
	stdout.Reset()
	if code := execute([]string{"logs", "--file", path, "--json", "--all"}, strings.NewReader(""), &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var got []time.Time
	if err := audit.Decode(&stdout, func(ev audit.Event) error { got = append(got, ev.Time); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(evs) {
		t.Fatalf("with --all: %d events, want %d", len(got), len(evs))
	}
	for i := 1; i < len(got); i++ {
		if got[i].Before(got[i-1]) {
			t.Fatalf("events out of order at %d: %v", i, got)
		}
	}
}

// TestLogsDefaultReadsPackagedAuditLog: without --file, `sluice logs` reads
// the audit file named by the daemon's config, which for the packaged config
// (scripts/deploy/config.yaml, installed as defaults.ConfigFile and passed by
// the systemd unit: pkg/defaults TestPackagedFilesAgree) is
// defaults.AuditLog; and the command prints what the daemon's audit sink
// wrote with that config.
func TestLogsDefaultReadsPackagedAuditLog(t *testing.T) {
	t.Setenv(defaults.EnvAuditFile, "")
	if got, err := defaultAuditFile("../../scripts/deploy/config.yaml"); err != nil || got != defaults.AuditLog {
		t.Fatalf("packaged config: sluice logs reads %q (%v), want %s", got, err, defaults.AuditLog)
	}
	if got, err := defaultAuditFile(filepath.Join(t.TempDir(), "none.yaml")); err != nil || got != defaults.AuditLog {
		t.Fatalf("no config: sluice logs reads %q (%v), want %s", got, err, defaults.AuditLog)
	}

	// End to end: the packaged config with its audit path moved to a
	// temporary file the daemon's audit sink writes.
	dir := t.TempDir()
	packaged, err := os.ReadFile("../../scripts/deploy/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "audit.jsonl")
	config := filepath.Join(dir, "config.yaml")
	moved := strings.Replace(string(packaged), "audit: "+defaults.AuditLog, "audit: "+file, 1)
	if err := os.WriteFile(config, []byte(moved), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := daemon.LoadConfig(config)
	if err != nil || cfg.Audit != file {
		t.Fatalf("config audit %q (%v), want %s", cfg.Audit, err, file)
	}
	// The daemon opens its sink with audit.OpenSink(cfg.Audit, ...).
	sink, err := audit.OpenSink(cfg.Audit, audit.SinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l := audit.NewLogger(slog.New(slog.DiscardHandler), audit.LoggerOptions{}, sink)
	for _, ev := range logEvents() {
		l.Emit(ev)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	daemonConfigFile = config
	t.Cleanup(func() { daemonConfigFile = defaults.ConfigFile })
	var stdout, stderr bytes.Buffer
	if code := execute([]string{"logs", "agent2"}, strings.NewReader(""), &stdout, &stderr); code != 0 {
		t.Fatalf("sluice logs: exit %d: %s", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), "1.2.3.4:22") {
		t.Fatalf("sluice logs without flags did not print the daemon's events:\n%s", stdout.String())
	}

	for audit, want := range map[string]string{`"-"`: "standard output", `""`: "writes no audit log"} {
		if err := os.WriteFile(config, []byte("audit: "+audit+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := defaultAuditFile(config); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("config audit %s: %v, want an error with %q", audit, err, want)
		}
	}
}
