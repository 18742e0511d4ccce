package dnsproxy

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/miekg/dns"
)

// Defaults for the zero fields of Config.
const (
	DefaultTimeout    = 2 * time.Second
	DefaultMinTTL     = 60 * time.Second
	DefaultGrace      = 30 * time.Second
	DefaultPerNameCap = 32
	DefaultCacheSize  = 10000
	DefaultBindings   = 65536
	// DefaultUDPSize is the EDNS0 payload size sluice advertises, to the
	// sandbox and to upstreams (the DNS flag day 2020 value).
	DefaultUDPSize = 1232
	// DefaultTCPReadTimeout and DefaultTCPIdleTimeout bound how long a
	// DNS-over-TCP client may take to send its first query and each later
	// one (miekg/dns's server defaults).
	DefaultTCPReadTimeout = 2 * time.Second
	DefaultTCPIdleTimeout = 8 * time.Second
	// maxCacheTTL caps how long an upstream answer is kept.
	maxCacheTTL = 24 * time.Hour
	// maxChain bounds how many CNAMEs are followed in one answer.
	maxChain = 16
)

// Config configures a Resolver. Zero fields take the defaults above.
type Config struct {
	// Upstreams are host:port addresses of the recursive resolvers to ask,
	// tried in order with failover. At least one is required.
	Upstreams []string
	// Timeout bounds one upstream resolution, all upstreams and the TCP
	// fallback included. When it passes the sandbox gets SERVFAIL.
	Timeout time.Duration
	// MinTTL is the smallest lifetime an allowlist entry gets, whatever the
	// record's TTL.
	MinTTL time.Duration
	// Grace is added to every allowlist entry's lifetime (zero means
	// DefaultGrace).
	Grace time.Duration
	// PerNameCap is the number of addresses remembered per name in a
	// sandbox's Bindings (least recently answered evicted first). Only used
	// for Bindings the Resolver creates itself.
	PerNameCap int
	// BindingsSize bounds the number of addresses in Bindings the Resolver
	// creates itself.
	BindingsSize int
	// CacheSize is the number of upstream answers kept.
	CacheSize int
	// UDPSize is the EDNS0 payload size advertised.
	UDPSize uint16
	// TCPReadTimeout is the time a DNS-over-TCP connection has to deliver
	// its first query in full (length prefix to last byte), TCPIdleTimeout
	// the time it has for each later one, counted from the previous
	// answer; past it the connection is closed. TCPIdleTimeout also bounds
	// writing one answer to a client that does not read.
	TCPReadTimeout time.Duration
	TCPIdleTimeout time.Duration
	// AllowLoopback lets loopback addresses in upstream answers reach the
	// sandbox and its allowlist. Off by default: an allowed name that
	// resolves to 127.0.0.1 or ::1 would otherwise open the host's loopback
	// (DNS rebinding). Remap targets are trusted either way.
	AllowLoopback bool
}

func (c Config) withDefaults() (Config, error) {
	if len(c.Upstreams) == 0 {
		return c, errors.New("no upstream resolvers configured")
	}
	for _, u := range c.Upstreams {
		if _, _, err := net.SplitHostPort(u); err != nil {
			return c, fmt.Errorf("upstream %q: want host:port: %w", u, err)
		}
	}
	c.Upstreams = append([]string(nil), c.Upstreams...)
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.MinTTL <= 0 {
		c.MinTTL = DefaultMinTTL
	}
	if c.Grace < 0 {
		return c, fmt.Errorf("grace %v: must not be negative", c.Grace)
	}
	if c.Grace == 0 {
		c.Grace = DefaultGrace
	}
	if c.PerNameCap <= 0 {
		c.PerNameCap = DefaultPerNameCap
	}
	if c.BindingsSize <= 0 {
		c.BindingsSize = DefaultBindings
	}
	if c.CacheSize <= 0 {
		c.CacheSize = DefaultCacheSize
	}
	if c.TCPReadTimeout <= 0 {
		c.TCPReadTimeout = DefaultTCPReadTimeout
	}
	if c.TCPIdleTimeout <= 0 {
		c.TCPIdleTimeout = DefaultTCPIdleTimeout
	}
	if c.UDPSize < dns.MinMsgSize {
		c.UDPSize = DefaultUDPSize
	}
	return c, nil
}

// UpstreamsFromResolvConf reads the nameservers of a resolv.conf file as
// host:port addresses.
func UpstreamsFromResolvConf(path string) ([]string, error) {
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	port := cc.Port
	if port == "" {
		port = "53"
	}
	out := make([]string, 0, len(cc.Servers))
	for _, s := range cc.Servers {
		out = append(out, net.JoinHostPort(s, port))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("reading %s: no nameserver lines", path)
	}
	return out, nil
}
