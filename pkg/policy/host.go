package policy

import (
	"fmt"
	"net/netip"
	"strings"
)

// maxName is the longest DNS name in presentation form, without the
// trailing dot.
const maxName = 253

// hostKind is the shape of a host pattern.
type hostKind uint8

const (
	hostExact     hostKind = iota // api.example.com
	hostSub                       // *.example.com: subdomains only
	hostSubOrSelf                 // **.example.com: the name and its subdomains
)

// labelByte reports whether c may appear in a (lower-cased) DNS label.
// Underscore is accepted because real names use it (_dmarc, SRV owners).
func labelByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

// normName lower-cases name into buf, strips one trailing dot and checks
// that it is a valid DNS name. It returns the normalised length, or -1.
// It never allocates.
func normName(name string, buf *[maxName + 1]byte) int {
	if n := len(name); n > 0 && name[n-1] == '.' {
		name = name[:n-1]
	}
	if len(name) == 0 || len(name) > maxName {
		return -1
	}
	label := 0
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		switch {
		case c == '.':
			if label == 0 {
				return -1
			}
			label = 0
		case labelByte(c):
			label++
			if label > 63 {
				return -1
			}
		default:
			return -1
		}
		buf[i] = c
	}
	if label == 0 {
		return -1
	}
	return len(name)
}

// NormalizeName returns name lower-cased without one trailing dot, and
// whether it is a valid DNS name (labels of 1-63 characters from a-z, 0-9,
// '-' and '_', 253 characters at most). Punycode (xn--) is taken as is.
func NormalizeName(name string) (string, bool) {
	var buf [maxName + 1]byte
	n := normName(name, &buf)
	if n < 0 {
		return "", false
	}
	if n == len(name) && name == string(buf[:n]) {
		return name, true
	}
	return string(buf[:n]), true
}

// parseHostPattern validates one entry of hosts and returns its suffix
// (normalised) and kind, or a message.
func parseHostPattern(s string) (string, hostKind, string) {
	orig := s
	kind := hostExact
	switch {
	case strings.HasPrefix(s, "**."):
		kind, s = hostSubOrSelf, s[3:]
	case strings.HasPrefix(s, "*."):
		kind, s = hostSub, s[2:]
	}
	switch {
	case orig == "*" || orig == "**":
		return "", 0, fmt.Sprintf("%q would match every name; sluice is default deny, list the hosts (for example \"*.example.com\")", orig)
	case strings.Contains(orig, "://"):
		return "", 0, fmt.Sprintf("%q is a URL; write the host name only (paths go in paths:)", orig)
	case strings.Contains(s, "*"):
		return "", 0, fmt.Sprintf("%q is not a valid pattern; a wildcard is only allowed as the whole first label: use \"*.example.com\" or \"**.example.com\"", orig)
	}
	if a, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
		bits := 32
		if a.Is6() {
			bits = 128
		}
		return "", 0, fmt.Sprintf("%q is an IP address; use cidrs: [\"%s/%d\"]", orig, a, bits)
	}
	if h, p, ok := strings.Cut(s, ":"); ok && h != "" && p != "" && !strings.Contains(p, ":") {
		return "", 0, fmt.Sprintf("%q has a port; list ports under ports:", orig)
	}
	n, ok := NormalizeName(s)
	if !ok {
		return "", 0, fmt.Sprintf("%q is not a valid host name (labels of 1-63 characters from a-z, 0-9, '-', '_'; at most 253 characters)", orig)
	}
	for _, l := range strings.Split(n, ".") {
		if l[0] == '-' || l[len(l)-1] == '-' {
			return "", 0, fmt.Sprintf("%q is not a valid host name: a label may not start or end with '-'", orig)
		}
	}
	return n, kind, ""
}

// patternString is the canonical text of a host pattern.
func patternString(suffix string, k hostKind) string {
	switch k {
	case hostSub:
		return "*." + suffix
	case hostSubOrSelf:
		return "**." + suffix
	}
	return suffix
}
