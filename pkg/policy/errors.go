package policy

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Problem is one finding of Parse: an error, or a warning that does not
// make the policy invalid.
type Problem struct {
	File    string
	Line    int // 1-based; 0 when unknown
	Col     int // 1-based; 0 when unknown
	Field   string
	Msg     string
	Warning bool
}

// String formats p as "file:line:col: [warning: ]field: message".
func (p Problem) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s:%d:%d: ", p.File, p.Line, p.Col)
	if p.Warning {
		b.WriteString("warning: ")
	}
	if p.Field != "" {
		b.WriteString(p.Field)
		b.WriteString(": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// Errors is the error Parse returns: every problem of the policy, sorted by
// position. It holds at least one Problem that is not a warning; warnings
// found in the same pass are included so that one report shows everything.
type Errors []Problem

// Error joins the problems, one per line.
func (e Errors) Error() string {
	lines := make([]string, len(e))
	for i, p := range e {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Errs returns the problems of e that are errors, not warnings.
func (e Errors) Errs() []Problem {
	var out []Problem
	for _, p := range e {
		if !p.Warning {
			out = append(out, p)
		}
	}
	return out
}

func sortProblems(ps []Problem) {
	slices.SortStableFunc(ps, func(a, b Problem) int {
		if c := cmp.Compare(a.Line, b.Line); c != 0 {
			return c
		}
		return cmp.Compare(a.Col, b.Col)
	})
}
