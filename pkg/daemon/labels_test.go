package daemon

import (
	"reflect"
	"strings"
	"testing"

	"github.com/sluice-dev/sluice/pkg/audit"
)

func TestParseLabels(t *testing.T) {
	for _, tt := range []struct {
		name    string
		flags   []string
		want    map[string]string
		wantErr string
	}{
		{name: "none"},
		{name: "two and a repeat", flags: []string{"user=alice", "team=ml", "user=bob"}, want: map[string]string{"user": "bob", "team": "ml"}},
		{name: "empty value and = in value", flags: []string{"a=", "b=x=y"}, want: map[string]string{"a": "", "b": "x=y"}},
		{name: "kubernetes key", flags: []string{"sluice.dev/user=alice"}, want: map[string]string{"sluice.dev/user": "alice"}},
		{name: "no =", flags: []string{"user"}, wantErr: "expect key=value"},
		{name: "bad key", flags: []string{"-x=1"}, wantErr: `label "-x"`},
		{name: "control character", flags: []string{"u=a\nb"}, wantErr: "without control characters"},
		{name: "too long", flags: []string{"u=" + strings.Repeat("v", 1025)}, wantErr: "at most 1024 bytes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseLabels(tt.flags)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tt.want)
			}
		})
	}
	many := map[string]string{}
	for i := 0; i <= audit.MaxLabels; i++ {
		many["k"+strings.Repeat("x", i)] = "v"
	}
	if err := CheckLabels(many); err == nil {
		t.Fatal("65 labels accepted")
	}
}

type captured struct{ ev []audit.Event }

func (c *captured) Emit(ev audit.Event) { c.ev = append(c.ev, ev) }

func TestLabeledEmitter(t *testing.T) {
	var c captured
	var ls labelSet
	e := labeledEmitter{&c, &ls}
	e.Emit(audit.Event{Kind: audit.KindHTTP})
	ls.set(map[string]string{"user": "alice"})
	e.Emit(audit.Event{Kind: audit.KindHTTP})
	ls.set(nil)
	e.Emit(audit.Event{Kind: audit.KindHTTP})
	if c.ev[0].Labels != nil || c.ev[1].Labels["user"] != "alice" || c.ev[2].Labels != nil {
		t.Fatalf("events %+v", c.ev)
	}
}
