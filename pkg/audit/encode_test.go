package audit

import (
	"bytes"
	"encoding/json"
	"math"
	"testing"
	"time"
)

// stdLine is the reference encoding: encoding/json, HTML escaping off.
func stdLine(ev *Event) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	err := enc.Encode(ev)
	return b.Bytes(), err
}

func fullEvent() Event {
	return Event{
		V: 1, Time: time.Date(2026, 11, 29, 7, 0, 0, 123456789, time.FixedZone("x", 2*3600+30*60)),
		Kind: KindHTTP, Sandbox: "sb", CgroupID: math.MaxUint64, PID: math.MaxUint32, Comm: "curl",
		Labels:   map[string]string{"user": "alice", "team": "ml<&>", "a\"b": "\xff"},
		Decision: DecisionAllow, Rule: "r", Reason: "why", QName: "q", QType: "A", Rcode: "NOERROR",
		Answers: []string{"1.2.3.4", "::1"}, Dst: "1.2.3.4:443", Proto: "tcp", SNI: "s", Host: "h",
		BytesUp: -5, BytesDown: math.MaxInt64, DurationMS: 3, Method: "GET", Path: "/p?x=REDACTED", Status: 200,
		Injected: []string{"Authorization"}, LatencyMS: 1.5, Ecosystem: "npm", Package: "@a/b", Version: "1.0.0",
		Dropped: 7, SinkErrors: 8, Sink: "file:/x",
	}
}

func TestAppendLineMatchesEncodingJSON(t *testing.T) {
	tests := []struct {
		name string
		ev   Event
	}{
		{"zero", Event{}},
		{"every field", fullEvent()},
		{"utc", Event{V: 1, Time: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Kind: KindDNS}},
		{"escapes", Event{Kind: "a\"b\\c\n\r\t\b\f\x00\x1f<>&\u2028\u2029é😀", Path: "\xff\xfe bad utf8 \xc3"}},
		{"html not escaped", Event{Path: "/a?b=REDACTED&c=<d>"}},
		{"empty slices omitted", Event{Answers: []string{}, Injected: nil, Labels: map[string]string{}}},
		{"empty strings in slice", Event{Answers: []string{"", ""}}},
		{"small float", Event{LatencyMS: 1e-7}},
		{"big float", Event{LatencyMS: 1e21}},
		{"negative float", Event{LatencyMS: -0.000001}},
		{"float e-09", Event{LatencyMS: 1.5e-9}},
		{"integral float", Event{LatencyMS: 100}},
		{"negative offset", Event{Time: time.Date(1999, 12, 31, 23, 59, 59, 1000, time.FixedZone("y", -(9*3600+30*60)))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want, err := stdLine(&tt.ev)
			if err != nil {
				t.Fatal(err)
			}
			got, err := appendLine(nil, &tt.ev)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("appendLine:\n%s\nencoding/json:\n%s", got, want)
			}
		})
	}
	// Unencodable values fail like encoding/json does.
	for _, ev := range []Event{
		{LatencyMS: math.NaN()},
		{LatencyMS: math.Inf(1)},
		{Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
		{Time: time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC)},
	} {
		if _, err := stdLine(&ev); err == nil {
			t.Fatalf("encoding/json accepted %+v", ev)
		}
		if _, err := appendLine(nil, &ev); err == nil {
			t.Fatalf("appendLine accepted %+v", ev)
		}
	}
}

func FuzzAppendLine(f *testing.F) {
	f.Add("kind", "path\u2028\xff", "comm\x01", int64(1), 1.25, int64(1700000000), 3600)
	f.Add("", "", "", int64(0), 0.0, int64(0), 0)
	f.Add("<&>", "\"\\", "é", int64(-1), 1e-7, int64(-62135596800), -3600)
	f.Fuzz(func(t *testing.T, kind, path, comm string, n int64, lat float64, sec int64, off int) {
		ev := Event{Kind: kind, Path: path, Comm: comm, BytesUp: n, LatencyMS: lat,
			Answers: []string{path, kind}, Time: time.Unix(sec, n).In(time.FixedZone("z", off%(30*3600)))}
		want, werr := stdLine(&ev)
		got, gerr := appendLine(nil, &ev)
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("encoding/json err %v, appendLine err %v", werr, gerr)
		}
		if werr == nil && !bytes.Equal(got, want) {
			t.Fatalf("appendLine:\n%q\nencoding/json:\n%q", got, want)
		}
	})
}

func BenchmarkEncode(b *testing.B) {
	ev := benchEvent()
	ev.Time = time.Now()
	b.Run("appendLine", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for b.Loop() {
			buf, _ = appendLine(buf[:0], &ev)
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		for b.Loop() {
			buf.Reset()
			enc.Encode(&ev)
		}
	})
}
