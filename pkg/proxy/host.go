package proxy

import (
	"net"
	"net/netip"
	"strings"

	"github.com/sluice-dev/sluice/pkg/audit"
)

// hostOnly returns the normalised host of a Host value or authority
// ("Example.COM:443" → "example.com", "[::1]:80" → "::1"), and false when it
// is neither a plain DNS name nor an IP literal.
func hostOnly(hostport string) (string, bool) {
	h := hostport
	if strings.HasPrefix(h, "[") {
		end := strings.IndexByte(h, ']')
		if end < 0 {
			return "", false
		}
		rest := h[end+1:]
		if rest != "" && (rest[0] != ':' || !allDigits(rest[1:])) {
			return "", false
		}
		a, err := netip.ParseAddr(h[1:end])
		if err != nil || a.Zone() != "" {
			return "", false
		}
		return a.Unmap().String(), true
	}
	if i := strings.LastIndexByte(h, ':'); i >= 0 {
		if strings.IndexByte(h[:i], ':') >= 0 {
			// bare IPv6 literal without brackets
			a, err := netip.ParseAddr(h)
			if err != nil || a.Zone() != "" {
				return "", false
			}
			return a.Unmap().String(), true
		}
		if !allDigits(h[i+1:]) {
			return "", false
		}
		h = h[:i]
	}
	// Without a colon only an IPv4 literal can parse (digits and dots):
	// skip ParseAddr, and its error allocation, for DNS names.
	if ipv4Chars(h) {
		if a, err := netip.ParseAddr(h); err == nil {
			return a.Unmap().String(), true
		}
	}
	if !validHostBytes([]byte(h)) {
		return "", false
	}
	return strings.ToLower(strings.TrimSuffix(h, ".")), true
}

func ipv4Chars(s string) bool {
	for i := 0; i < len(s); i++ {
		if (s[i] < '0' || s[i] > '9') && s[i] != '.' {
			return false
		}
	}
	return true
}

func allDigits(s string) bool {
	if len(s) > 5 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// joinHostPort formats host and port for a URL authority.
func joinHostPort(host string, port uint16) string {
	return net.JoinHostPort(host, itoa(port))
}

func itoa(p uint16) string {
	var b [5]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + p%10)
		p /= 10
		if p == 0 {
			break
		}
	}
	return string(b[i:])
}

// hasDotSegment reports whether a decoded URL path contains "." or ".."
// segments, which an upstream would resolve after sluice matched the path.
func hasDotSegment(p string) bool {
	for len(p) > 0 {
		var seg string
		i := strings.IndexByte(p, '/')
		if i < 0 {
			seg, p = p, ""
		} else {
			seg, p = p[:i], p[i+1:]
		}
		if seg == "." || seg == ".." {
			return true
		}
	}
	return false
}

// auditPath is a URL path with query values replaced, as the audit schema
// documents: "/s?q=x&n=1" → "/s?q=REDACTED&n=REDACTED".
func auditPath(path, rawQuery string) string {
	if rawQuery == "" {
		return path
	}
	return audit.RedactPath(path + "?" + rawQuery)
}
