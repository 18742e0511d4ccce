package policy

import (
	"fmt"
	"strconv"

	"gopkg.in/yaml.v3"
)

// Limits are a sandbox's resource fences in the daemon (and in sluice
// run). At a fence the new work is refused; nothing another sandbox does
// can reach this sandbox's fences. A zero field means the default.
type Limits struct {
	// Connections bounds the sandbox's concurrent proxied (client)
	// connections.
	Connections int
	// UpstreamConnections bounds the concurrent upstream connections of
	// its spliced connections.
	UpstreamConnections int
	// RequestHeadBytes bounds the bytes of unfinished HTTP/1.x request
	// heads the proxy holds for the sandbox at once.
	RequestHeadBytes int64
	// DNSQPS bounds the DNS queries per second (bursts of one second's
	// worth).
	DNSQPS int
}

// DefaultLimits are the fences of a policy that sets none.
var DefaultLimits = Limits{
	Connections:         512,
	UpstreamConnections: 512,
	RequestHeadBytes:    16 << 20,
	DNSQPS:              1000,
}

// limitFields is the one table of limits: YAML name, bounds, and where the
// value goes. The parser, the schema test and the README read it.
var limitFields = []struct {
	name     string
	min, max int64
	set      func(*Limits, int64)
}{
	{"connections", 1, 1 << 20, func(l *Limits, v int64) { l.Connections = int(v) }},
	{"upstream_connections", 1, 1 << 20, func(l *Limits, v int64) { l.UpstreamConnections = int(v) }},
	{"request_head_bytes", 1 << 16, 1 << 34, func(l *Limits, v int64) { l.RequestHeadBytes = v }},
	{"dns_qps", 1, 1 << 20, func(l *Limits, v int64) { l.DNSQPS = int(v) }},
}

// Fences returns the policy's limits with the defaults filled in.
func (p *Policy) Fences() Limits {
	l := DefaultLimits
	if p == nil {
		return l
	}
	if p.Limits.Connections > 0 {
		l.Connections = p.Limits.Connections
	}
	if p.Limits.UpstreamConnections > 0 {
		l.UpstreamConnections = p.Limits.UpstreamConnections
	}
	if p.Limits.RequestHeadBytes > 0 {
		l.RequestHeadBytes = p.Limits.RequestHeadBytes
	}
	if p.Limits.DNSQPS > 0 {
		l.DNSQPS = p.Limits.DNSQPS
	}
	return l
}

// limits parses the top-level limits block.
func (ps *parser) limits(n *yaml.Node) Limits {
	names := make([]string, len(limitFields))
	for i, f := range limitFields {
		names[i] = f.name
	}
	var l Limits
	fields, ok := ps.mapping(n, "limits", names...)
	if !ok {
		return l
	}
	for _, f := range fields {
		fp := join("limits", f.key.Value)
		for _, lf := range limitFields {
			if lf.name != f.key.Value {
				continue
			}
			v, err := strconv.ParseInt(f.val.Value, 10, 64)
			if f.val.Kind != yaml.ScalarNode || f.val.Tag != "!!int" || err != nil || v < lf.min || v > lf.max {
				ps.errf(f.val, fp, "%q is not an integer from %d to %d", f.val.Value, lf.min, lf.max)
				continue
			}
			lf.set(&l, v)
		}
	}
	return l
}

// String renders limits for messages.
func (l Limits) String() string {
	return fmt.Sprintf("connections=%d upstream_connections=%d request_head_bytes=%d dns_qps=%d",
		l.Connections, l.UpstreamConnections, l.RequestHeadBytes, l.DNSQPS)
}
