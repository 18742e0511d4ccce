package policy

import (
	"fmt"
	"strings"
)

// glob is a compiled path pattern. Segments are split on '/'; a segment
// "**" matches zero or more whole segments, '*' inside a segment matches
// any run of characters other than '/'.
type glob struct {
	text  string
	segs  []string // segments after the leading '/'
	exact bool     // no wildcard at all
	spec  int      // specificity, higher wins; always >= 1
}

// compileGlob validates a paths entry.
func compileGlob(p string) (glob, string) {
	switch {
	case p == "":
		return glob{}, "empty path pattern; use \"/**\" for every path"
	case p[0] != '/':
		return glob{}, fmt.Sprintf("%q must start with '/'", p)
	case strings.ContainsAny(p, "?#"):
		return glob{}, fmt.Sprintf("%q contains '?' or '#'; paths match without the query string, drop it", p)
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c < 0x21 || c == 0x7f {
			return glob{}, fmt.Sprintf("%q contains a space or control character; write it percent-decoded without spaces", p)
		}
	}
	g := glob{text: p, segs: strings.Split(p[1:], "/"), exact: !strings.Contains(p, "*")}
	literal, doubles := 0, 0
	for _, s := range g.segs {
		switch {
		case s == "**":
			doubles++
		case strings.Contains(s, "**"):
			return glob{}, fmt.Sprintf("%q is not a valid pattern: \"**\" must be a whole segment (\"/a/**/b\"); use '*' inside a segment", p)
		case s == "." || s == "..":
			return glob{}, fmt.Sprintf("%q has a %q segment; the proxy refuses such paths, write the resolved path", p, s)
		}
		literal += len(s) - strings.Count(s, "*") + 1 // +1 for the '/'
	}
	if doubles > 4 {
		return glob{}, fmt.Sprintf("%q has more than 4 \"**\" segments", p)
	}
	g.spec = 1 + 2*literal - doubles
	if g.exact {
		g.spec += 1 << 20
	}
	return g, ""
}

// match reports whether path (no query string, starting with '/') matches.
// It never allocates: a greedy match with backtracking to the last "**",
// O(len(path) * len(segs)) at worst.
func (g *glob) match(path string) bool {
	if g.exact {
		return path == g.text
	}
	if len(path) == 0 || path[0] != '/' {
		return false
	}
	rest := path[1:]
	// Position in the path (start of the current segment) and pattern.
	pi, si := 0, 0
	starSi, starPi := -1, 0
	for {
		if pi > len(rest) { // past the last segment
			break
		}
		seg, next := segment(rest, pi)
		if si < len(g.segs) && g.segs[si] == "**" {
			starSi, starPi = si, pi
			si++
			continue
		}
		if si < len(g.segs) && matchSeg(g.segs[si], seg) {
			si++
			pi = next
			continue
		}
		if starSi >= 0 {
			// Let the last "**" swallow one more segment.
			_, n := segment(rest, starPi)
			starPi = n
			pi = n
			si = starSi + 1
			continue
		}
		return false
	}
	for si < len(g.segs) && g.segs[si] == "**" {
		si++
	}
	return si == len(g.segs)
}

// segment returns the segment of s starting at i and the start of the next
// one (len(s)+1 after the last).
func segment(s string, i int) (string, int) {
	j := strings.IndexByte(s[i:], '/')
	if j < 0 {
		return s[i:], len(s) + 1
	}
	return s[i : i+j], i + j + 1
}

// matchSeg matches one segment against a pattern where '*' matches any run
// of characters (the segment holds no '/').
func matchSeg(pat, s string) bool {
	pi, si := 0, 0
	star, mark := -1, 0
	for si < len(s) {
		switch {
		case pi < len(pat) && pat[pi] == '*':
			star, mark = pi, si
			pi++
		case pi < len(pat) && pat[pi] == s[si]:
			pi++
			si++
		case star >= 0:
			pi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for pi < len(pat) && pat[pi] == '*' {
		pi++
	}
	return pi == len(pat)
}
