package daemon

import (
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/enforcer"
)

func TestOriginCache(t *testing.T) {
	t.Parallel()
	c := newOriginCache(2, time.Hour)
	if _, ok := c.Get(1); ok {
		t.Fatal("empty cache answered")
	}
	c.Add(1, enforcer.Origin{PID: 1})
	c.Add(2, enforcer.Origin{PID: 2})
	if o, ok := c.Get(2); !ok || o.PID != 2 {
		t.Fatalf("get 2: %+v %v", o, ok)
	}
	c.Add(3, enforcer.Origin{PID: 3}) // full, nothing expired: starts over
	if len(c.m) > 2 {
		t.Fatalf("cache grew past its size: %d", len(c.m))
	}
	if o, ok := c.Get(3); !ok || o.PID != 3 {
		t.Fatalf("get 3 after overflow: %+v %v", o, ok)
	}
	short := newOriginCache(4, -time.Second) // every entry already expired
	short.Add(1, enforcer.Origin{PID: 1})
	if _, ok := short.Get(1); ok {
		t.Fatal("expired entry answered")
	}
}
