package dnsproxy

import (
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/miekg/dns"
)

// cacheKey identifies one upstream answer. The upstream set is the
// Resolver's own, so a cache is only ever shared by sandboxes that use the
// same upstreams; the name is normalised (lower case, no trailing dot).
type cacheKey struct {
	name  string
	qtype uint16
}

// entry is one upstream answer, unfiltered. It is immutable once stored:
// every reader copies what it hands out.
type entry struct {
	rcode  int
	answer []dns.RR
	// soa is the authority SOA of a negative answer, nil otherwise.
	soa     *dns.SOA
	stored  time.Time
	expires time.Time
}

// age is how many whole seconds of TTL the entry has used at now.
func (e *entry) age(now time.Time) uint32 {
	d := now.Sub(e.stored)
	if d <= 0 {
		return 0
	}
	return uint32(d / time.Second)
}

// cache holds upstream answers for their TTL (RFC 2308 negative TTL for
// NXDOMAIN and NODATA). Lookups do not allocate.
type cache struct {
	lru *lru.Cache[cacheKey, *entry]
}

func newCache(size int) *cache {
	c, _ := lru.New[cacheKey, *entry](size) // size > 0 by Config defaults
	return &cache{lru: c}
}

// get returns the live entry for k, if any.
func (c *cache) get(k cacheKey, now time.Time) (*entry, bool) {
	e, ok := c.lru.Get(k)
	if !ok {
		return nil, false
	}
	if !now.Before(e.expires) {
		c.lru.Remove(k)
		return nil, false
	}
	return e, true
}

func (c *cache) put(k cacheKey, e *entry) {
	if e.expires.After(e.stored) {
		c.lru.Add(k, e)
	}
}

// newEntry digests an upstream response received at now. Only NOERROR and
// NXDOMAIN answers get a lifetime; others are returned uncacheable.
func newEntry(m *dns.Msg, now time.Time) *entry {
	e := &entry{rcode: m.Rcode, stored: now, expires: now}
	for _, rr := range m.Answer {
		switch rr.Header().Rrtype {
		case dns.TypeOPT, dns.TypeRRSIG, dns.TypeSIG, dns.TypeTSIG:
			continue
		}
		e.answer = append(e.answer, rr)
	}
	for _, rr := range m.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			e.soa = soa
			break
		}
	}
	if m.Rcode != dns.RcodeSuccess && m.Rcode != dns.RcodeNameError {
		return e
	}
	var ttl uint32
	switch {
	case m.Rcode == dns.RcodeSuccess && len(e.answer) > 0:
		ttl = e.answer[0].Header().Ttl
		for _, rr := range e.answer[1:] {
			ttl = min(ttl, rr.Header().Ttl)
		}
	case e.soa != nil:
		// RFC 2308 section 5: the lesser of the SOA's TTL and MINIMUM.
		ttl = min(e.soa.Hdr.Ttl, e.soa.Minttl)
	default:
		// A negative answer without SOA is not cached (RFC 2308).
		return e
	}
	e.expires = now.Add(min(time.Duration(ttl)*time.Second, maxCacheTTL))
	return e
}
