package policy

import (
	"fmt"
	"slices"
	"strings"
)

// precedenceTraps warns about a method deny rule that a path-restricted
// allow rule makes unreachable. Path specificity (key 2) outranks methods
// (key 3) and action (key 5), so for
//
//   - {name: api, hosts: [api.example.com], paths: ["/repos/**"]}
//   - {name: no-delete, hosts: [api.example.com], methods: [DELETE], action: deny}
//
// DELETE /repos/x is allowed by api: the deny only covers paths no allow
// rule with paths matches. The warning names both rules and the fix.
func (ps *parser) precedenceTraps(p *Policy, srcs []*ruleSrc) {
	for bi, b := range p.Rules {
		if b.Action != ActionDeny || len(b.Methods) == 0 || len(b.Paths) > 0 || b.Listen != nil {
			continue
		}
		for _, a := range p.Rules {
			if a.Action != ActionAllow || len(a.Paths) == 0 || !overlaps(a.Methods, b.Methods) || !overlaps(a.Ports, b.Ports) {
				continue
			}
			for hj, bh := range b.Hosts {
				host := ""
				for _, ah := range a.Hosts {
					if hostAtLeastAsSpecific(ah, bh) {
						host = ah
						break
					}
				}
				if host == "" {
					continue
				}
				n := srcs[bi].node
				if hj < len(srcs[bi].hostNodes) {
					n = srcs[bi].hostNodes[hj]
				}
				methods := b.Methods
				if len(a.Methods) > 0 {
					methods = slices.DeleteFunc(slices.Clone(b.Methods), func(m string) bool { return !slices.Contains(a.Methods, m) })
				}
				ps.warnf(n, fmt.Sprintf("rules[%d].methods", b.Index),
					"the deny of %s does not apply to %s paths %s: rules[%d] (%s) allows them, and a rule with paths outranks one without (see Precedence); give this rule the same paths, or give rules[%d] methods that leave out %s",
					strings.Join(methods, ", "), host, quoteAll(a.Paths), a.Index, a.Name, a.Index, strings.Join(methods, ", "))
				break
			}
		}
	}
}

// overlaps reports whether two restriction lists can match the same
// request (an empty list matches everything).
func overlaps[T comparable](a, b []T) bool {
	if len(a) == 0 || len(b) == 0 {
		return true
	}
	for _, x := range a {
		if slices.Contains(b, x) {
			return true
		}
	}
	return false
}

// hostAtLeastAsSpecific reports whether host pattern a matches names that
// pattern b also matches, at a specificity b does not outrank: the same
// pattern, or an exact name (or a longer wildcard) below b's suffix.
func hostAtLeastAsSpecific(a, b string) bool {
	if a == b {
		return true
	}
	bs, bAny := strings.CutPrefix(b, "**.")
	if !bAny {
		var ok bool
		if bs, ok = strings.CutPrefix(b, "*."); !ok {
			return false // b is an exact name, different from a
		}
	}
	as := a
	if s, ok := strings.CutPrefix(a, "**."); ok {
		as = s
	} else if s, ok := strings.CutPrefix(a, "*."); ok {
		as = s
	}
	return strings.HasSuffix(as, "."+bs) || (bAny && as == bs && !strings.HasPrefix(a, "*"))
}

func quoteAll(xs []string) string {
	q := make([]string, len(xs))
	for i, x := range xs {
		q[i] = fmt.Sprintf("%q", x)
	}
	return "[" + strings.Join(q, ", ") + "]"
}
