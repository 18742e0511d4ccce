package audit

import (
	"encoding/json"
	"os"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"
)

// fieldConsts lists every Field* constant; keep it complete.
var fieldConsts = []string{
	FieldVersion, FieldTime, FieldKind, FieldSandbox, FieldCgroupID, FieldPID, FieldComm, FieldLabels,
	FieldDecision, FieldRule, FieldReason, FieldQName, FieldQType, FieldRcode, FieldAnswers,
	FieldDst, FieldProto, FieldSNI, FieldHost, FieldBytesUp, FieldBytesDown, FieldDuration,
	FieldMethod, FieldPath, FieldStatus, FieldInjected, FieldLatency, FieldEcosystem,
	FieldPackage, FieldVersionOf, FieldDropped, FieldSinkErrs, FieldSink,
}

func jsonTags() []string {
	var out []string
	rt := reflect.TypeFor[Event]()
	for i := range rt.NumField() {
		tag, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
		out = append(out, tag)
	}
	sort.Strings(out)
	return out
}

// The Field* constants and the struct tags of Event are the same set.
func TestFieldConstantsMatchTags(t *testing.T) {
	consts := append([]string(nil), fieldConsts...)
	sort.Strings(consts)
	if got, want := strings.Join(consts, ","), strings.Join(jsonTags(), ","); got != want {
		t.Fatalf("Field* constants\n%s\ndiffer from Event tags\n%s", got, want)
	}
}

// Every field is documented in SCHEMA.md, and the document names the
// current schema version.
func TestSchemaDocumented(t *testing.T) {
	doc, err := os.ReadFile("SCHEMA.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range jsonTags() {
		if !strings.Contains(string(doc), "| `"+f+"` |") {
			t.Errorf("SCHEMA.md has no table row for field %q", f)
		}
	}
	for _, k := range []string{KindDNS, KindConn, KindHTTP, KindKernel, KindCallback, KindAudit, KindSecret, KindSandbox} {
		if !strings.Contains(string(doc), "`"+k+"`") {
			t.Errorf("SCHEMA.md does not name kind %q", k)
		}
	}
	if !strings.Contains(string(doc), "Version 1") || SchemaVersion != 1 {
		t.Error("SCHEMA.md does not describe the current SchemaVersion")
	}
}

// Zero fields are omitted, except the always-present ones.
func TestEventJSONOmitsZero(t *testing.T) {
	b, err := json.Marshal(Event{V: 1, Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Kind: KindDNS})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), `{"v":1,"ts":"2026-01-02T03:04:05Z","kind":"dns","decision":""}`; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

// The examples in SCHEMA.md are valid events that survive a round trip.
func TestSchemaExamples(t *testing.T) {
	doc, err := os.ReadFile("SCHEMA.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, _ := strings.Cut(string(doc), "## Examples\n\n```json\n")
	block, _, ok := strings.Cut(rest, "```")
	if !ok || block == "" {
		t.Fatal("no example block in SCHEMA.md")
	}
	n := 0
	err = Decode(strings.NewReader(block), func(ev Event) error {
		n++
		if ev.V != SchemaVersion || ev.Time.IsZero() || ev.Kind == "" {
			t.Errorf("example %d lacks v, ts or kind: %+v", n, ev)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 5 {
		t.Fatalf("only %d examples parsed", n)
	}
}
