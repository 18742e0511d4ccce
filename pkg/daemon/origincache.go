package daemon

import (
	"sync"
	"time"

	"github.com/sluice-dev/sluice/pkg/enforcer"
)

// originCache keeps the kernel's answer to "which process sent the query
// from this UDP port" for a moment (dnsOrigins). It replaces an expirable
// LRU that started a goroutine with a 10 ms ticker per sandbox: at 1,000
// idle sandboxes that was 100,000 wake-ups a second, a fifth of the
// daemon's CPU, and ~10 KiB of memory each (issue #21). This one allocates
// on first use and does its expiry on access.
type originCache struct {
	mu  sync.Mutex
	ttl time.Duration
	max int
	m   map[uint16]originEntry
}

type originEntry struct {
	o     enforcer.Origin
	until time.Time
}

func newOriginCache(max int, ttl time.Duration) *originCache {
	return &originCache{max: max, ttl: ttl}
}

// Get returns the origin cached for port, if not expired.
func (c *originCache) Get(port uint16) (enforcer.Origin, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[port]
	if !ok {
		return enforcer.Origin{}, false
	}
	if time.Now().After(e.until) {
		delete(c.m, port)
		return enforcer.Origin{}, false
	}
	return e.o, true
}

// Add caches o for port. When full, expired entries go, and if none has
// expired, all of them (the cache only saves map lookups).
func (c *originCache) Add(port uint16, o enforcer.Origin) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[uint16]originEntry{}
	}
	if _, ok := c.m[port]; !ok && len(c.m) >= c.max {
		for p, e := range c.m {
			if now.After(e.until) {
				delete(c.m, p)
			}
		}
		if len(c.m) >= c.max {
			clear(c.m)
		}
	}
	c.m[port] = originEntry{o: o, until: now.Add(c.ttl)}
}
