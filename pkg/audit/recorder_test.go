package audit

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestRecorder(t *testing.T) {
	r := NewRecorder()
	log, _ := testLog(t)
	l := NewLogger(log, LoggerOptions{}, r)
	defer l.Close()
	go func() {
		for _, q := range []string{"a.example", "b.example", "c.example"} {
			l.Emit(Event{Kind: KindDNS, QName: q})
			time.Sleep(time.Millisecond)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	evs, err := r.Wait(ctx, func(evs []Event) bool { return len(evs) >= 3 })
	if err != nil {
		t.Fatal(err)
	}
	if evs[0].QName != "a.example" || evs[2].QName != "c.example" {
		t.Fatalf("order: %+v", evs)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel2()
	if _, err := r.Wait(short, func(evs []Event) bool { return len(evs) > 3 }); err == nil || !strings.Contains(err.Error(), "3 recorded") {
		t.Fatalf("Wait past deadline: %v", err)
	}
	r.Emit(Event{Kind: KindConn})
	if got := len(r.Events()); got != 4 {
		t.Fatalf("%d events after Emit, want 4", got)
	}
	r.Reset()
	if len(r.Events()) != 0 {
		t.Fatal("Reset kept events")
	}
}
