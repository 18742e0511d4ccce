package audit

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestOpenSink: the one meaning of each --audit / "audit" value.
func TestOpenSink(t *testing.T) {
	t.Parallel()
	if s, err := OpenSink("", SinkOptions{}); s != nil || err != nil {
		t.Fatalf(`"": %v, %v; want no sink`, s, err)
	}

	var stderr bytes.Buffer
	s, err := OpenSink("-", SinkOptions{Stderr: &stderr})
	if w, ok := s.(*WriterSink); err != nil || !ok || w.String() != "stderr" {
		t.Fatalf(`"-": %v, %v; want the stderr sink`, s, err)
	}
	if err := s.WriteEvent(&Event{V: 1, Kind: KindDNS, QName: "a.example"}); err != nil {
		t.Fatal(err)
	}
	if err := s.(*WriterSink).Flush(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr.String(), `"qname":"a.example"`) {
		t.Fatalf(`"-" wrote %q to stderr`, stderr.String())
	}

	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s, err = OpenSink(path, SinkOptions{})
	if f, ok := s.(*FileSink); err != nil || !ok || f.Path() != path {
		t.Fatalf("file: %v, %v", s, err)
	}
	s.(*FileSink).Close()
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("file sink did not create %s with mode 0600: %v", path, err)
	}

	if _, err := OpenSink(filepath.Join(t.TempDir(), "no", "dir.jsonl"), SinkOptions{}); err == nil {
		t.Fatal("a file in a missing directory opened")
	}
}
