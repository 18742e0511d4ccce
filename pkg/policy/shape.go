package policy

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// MaxMatchLen is the longest body match that deny_body and redact_body are
// guaranteed to catch when a body is streamed (larger than PrebufferBody):
// the proxy keeps the last MaxMatchLen bytes of a body back until the
// bytes after them arrive, so a match split across reads or packets is
// still seen whole. A redact_body match longer than this may be replaced
// in several pieces; a deny_body match longer than this may be missed in a
// streamed body. Bodies up to PrebufferBody are checked whole.
const MaxMatchLen = 4096

// PrebufferBody is how much of a request body the proxy reads before
// sending anything upstream when the rule has request: shaping. A body
// that ends within it is checked whole, and a refusal (413, 403, 400)
// reaches the upstream as nothing at all. A longer body is streamed: a
// violation found later aborts the upstream request before it completes.
const PrebufferBody = 1 << 20

// RequestShaping is a rule's request: section, shaping request bodies on an
// intercepted rule.
type RequestShaping struct {
	// MaxBody is the largest body allowed, in bytes; 0 means no limit.
	MaxBody int64
	// DenyBody refuses (403) a body that matches any of these.
	DenyBody []*regexp.Regexp
	// Redact replaces matches before the body is forwarded, in order.
	Redact []Redaction
	// JSON requires a body whose Content-Type says JSON to parse as JSON
	// (else 400).
	JSON bool
}

// Redaction is one redact_body entry.
type Redaction struct {
	Pattern *regexp.Regexp
	With    string
}

// Rewrites reports whether the request shaping may change the body (so its
// length is only known once it is read).
func (q *RequestShaping) Rewrites() bool { return q != nil && len(q.Redact) > 0 }

// sizeUnits maps the unit words of max_body to their factor.
var sizeUnits = map[string]int64{
	"": 1, "B": 1,
	"KB": 1000, "MB": 1000 * 1000, "GB": 1000 * 1000 * 1000,
	"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30,
}

const sizeUnitList = "B, KB, MB, GB, KiB, MiB, GiB"

// ParseSize parses a size such as 512, 64KiB, 10MiB or 1GB.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("%q is not a size; expect a number with an optional unit (%s), for example 10MiB", s, sizeUnitList)
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	unit := strings.TrimSpace(t[i:])
	f, ok := sizeUnits[unit]
	if err != nil || !ok {
		return 0, fmt.Errorf("%q is not a size; expect a number with an optional unit (%s), for example 10MiB", s, sizeUnitList)
	}
	if n <= 0 {
		return 0, fmt.Errorf("%q must be positive", s)
	}
	if n > (1<<62)/f {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return n * f, nil
}

// request parses a rule's request: mapping.
func (ps *parser) request(path string, n *yaml.Node) *RequestShaping {
	fields, ok := ps.mapping(n, path, "max_body", "deny_body", "redact_body", "json")
	if !ok {
		return nil
	}
	q := &RequestShaping{}
	good := true
	for _, f := range fields {
		fp := join(path, f.key.Value)
		switch f.key.Value {
		case "max_body":
			var s string
			if f.val.Kind == yaml.ScalarNode && (f.val.Tag == "!!int" || f.val.Tag == "!!str") {
				s = f.val.Value
			} else {
				ps.errf(f.val, fp, "expect a size such as 10MiB, got %s", kindName(f.val))
				good = false
				continue
			}
			v, err := ParseSize(s)
			if err != nil {
				ps.errf(f.val, fp, "%v", err)
				good = false
				continue
			}
			q.MaxBody = v
		case "deny_body":
			vals, nodes := ps.strs(f.val, fp)
			if len(nodes) == 0 && f.val.Kind == yaml.SequenceNode {
				ps.errf(f.val, fp, "empty list; give at least one RE2 pattern or drop deny_body")
				good = false
			}
			for j, s := range vals {
				re, msg := compileBodyPattern(s)
				if msg != "" {
					ps.errf(nodes[j], fmt.Sprintf("%s[%d]", fp, j), "%s", msg)
					good = false
					continue
				}
				q.DenyBody = append(q.DenyBody, re)
			}
		case "redact_body":
			items, ok := ps.seq(f.val, fp)
			if !ok {
				good = false
				continue
			}
			if len(items) == 0 {
				ps.errf(f.val, fp, "empty list; give at least one {pattern, with} or drop redact_body")
				good = false
			}
			for j, it := range items {
				r, ok := ps.redaction(fmt.Sprintf("%s[%d]", fp, j), it)
				if !ok {
					good = false
					continue
				}
				q.Redact = append(q.Redact, r)
			}
		case "json":
			if b, ok := ps.boolean(f.val, fp); ok {
				q.JSON = b
			} else {
				good = false
			}
		}
	}
	if good && len(fields) == 0 {
		ps.errf(n, path, "empty; set at least one of max_body, deny_body, redact_body, json")
		return nil
	}
	if !good {
		return nil
	}
	return q
}

func (ps *parser) redaction(path string, n *yaml.Node) (Redaction, bool) {
	fields, ok := ps.mapping(n, path, "pattern", "with")
	if !ok {
		return Redaction{}, false
	}
	var r Redaction
	good, haveWith := true, false
	for _, f := range fields {
		fp := join(path, f.key.Value)
		s, ok := ps.str(f.val, fp)
		if !ok {
			good = false
			continue
		}
		switch f.key.Value {
		case "pattern":
			re, msg := compileBodyPattern(s)
			if msg != "" {
				ps.errf(f.val, fp, "%s", msg)
				good = false
				continue
			}
			r.Pattern = re
		case "with":
			haveWith = true
			r.With = s
		}
	}
	if r.Pattern == nil && good {
		ps.errf(n, join(path, "pattern"), "required; an RE2 pattern such as '\\b\\d{3}-\\d{2}-\\d{4}\\b'")
		good = false
	}
	if !haveWith && good {
		ps.errf(n, join(path, "with"), "required; the replacement text, for example \"[redacted]\"")
		good = false
	}
	return r, good
}

// compileBodyPattern compiles an RE2 body pattern; one that matches the
// empty string is refused (it would match between every two bytes).
func compileBodyPattern(s string) (*regexp.Regexp, string) {
	re, err := regexp.Compile(s)
	if err != nil {
		return nil, fmt.Sprintf("%q is not an RE2 pattern: %v", s, strings.TrimPrefix(err.Error(), "error parsing regexp: "))
	}
	if re.MatchString("") {
		return nil, fmt.Sprintf("%q matches the empty string; a body pattern must match at least one byte", s)
	}
	return re, ""
}

// processes parses a rule's processes: list.
func (ps *parser) processes(path string, n *yaml.Node) []string {
	vals, nodes := ps.strs(n, path)
	if len(vals) == 0 && n.Kind == yaml.SequenceNode {
		ps.errf(n, path, "empty list; name at least one executable (a base name such as git or an absolute path such as /usr/bin/git), or drop processes")
		return nil
	}
	var out []string
	for j, s := range vals {
		jp := fmt.Sprintf("%s[%d]", path, j)
		switch {
		case s == "" || strings.ContainsAny(s, "\x00*?[") || strings.HasSuffix(s, "/"):
			ps.errf(nodes[j], jp, "%q is not an executable; expect a base name such as git or an absolute path such as /usr/bin/git (no wildcards)", s)
			continue
		case strings.Contains(s, "/") && !filepath.IsAbs(s):
			ps.errf(nodes[j], jp, "%q is a relative path; expect a base name such as git or an absolute path such as /usr/bin/git", s)
			continue
		case filepath.IsAbs(s) && filepath.Clean(s) != s:
			ps.errf(nodes[j], jp, "%q is not a clean path; use %s", s, filepath.Clean(s))
			continue
		}
		out = append(out, s)
	}
	return out
}

// ProcessMatches reports whether exe (the path of a process's executable,
// as /proc/PID/exe names it) is one of names. An absolute path matches that
// path only. A base name matches every executable with that base name, and
// also the helper programs NAME-* in a directory named NAME-core: git runs
// its transports as separate programs from its exec path (git clone over
// HTTPS is /usr/lib/git-core/git-remote-http), so "git" admits them. An
// unknown executable ("") matches nothing.
func ProcessMatches(names []string, exe string) bool {
	if exe == "" {
		return false
	}
	base := filepath.Base(exe)
	dir := filepath.Base(filepath.Dir(exe))
	for _, n := range names {
		if strings.HasPrefix(n, "/") {
			if n == exe {
				return true
			}
			continue
		}
		if base == n || dir == n+"-core" && strings.HasPrefix(base, n+"-") {
			return true
		}
	}
	return false
}

// checkShaping reports the combinations request: and processes: cannot be
// in.
func (ps *parser) checkShaping(r *Rule, path string, requestNode, processesNode *yaml.Node) {
	if processesNode != nil && r.Direct {
		ps.errf(processesNode, join(path, "processes"), "a direct rule bypasses the proxy, so it cannot check processes; drop direct: true or the processes")
	}
	if requestNode == nil {
		return
	}
	switch {
	case r.Action == ActionDeny:
		ps.errf(requestNode, join(path, "request"), "a deny rule cannot have request; it forwards nothing")
	case r.Direct:
		ps.errf(requestNode, join(path, "request"), "a direct rule bypasses the proxy, so it cannot shape requests; drop direct: true or the request")
	}
}

// String summarises the shaping for `sluice policy explain` ("" for nil).
func (q *RequestShaping) String() string {
	if q == nil {
		return ""
	}
	var parts []string
	if q.MaxBody > 0 {
		parts = append(parts, "max_body "+strconv.FormatInt(q.MaxBody, 10)+" bytes")
	}
	if len(q.DenyBody) > 0 {
		parts = append(parts, fmt.Sprintf("deny_body %d patterns", len(q.DenyBody)))
	}
	if len(q.Redact) > 0 {
		parts = append(parts, fmt.Sprintf("redact_body %d patterns", len(q.Redact)))
	}
	if q.JSON {
		parts = append(parts, "json")
	}
	return strings.Join(parts, ", ")
}
