package audit

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
)

// Summary is a sink that counts decisions for the one-screen report
// `sluice run` prints at exit. Safe for concurrent use.
//
// What is counted, per host (SNI, Host, query name or destination):
//   - allowed: spliced or allowed connections and allowed HTTP requests
//     (an intercepted connection counts through its requests);
//   - denied: refused connections and requests, kernel refusals and DNS
//     queries refused by policy;
//   - would_deny: the same under `mode: audit`.
//
// Allowed DNS queries are not counted: the connections that follow are.
type Summary struct {
	mu       sync.Mutex
	hosts    map[string]*HostCount
	refusals map[Refusal]int
}

// HostCount is the tally of one host.
type HostCount struct {
	Host      string
	Allowed   int
	Denied    int
	WouldDeny int
}

// Refusal identifies one kind of refusal in the summary.
type Refusal struct {
	Kind     string // dns, conn, http, kernel
	Decision string // deny or would_deny
	Target   string // host, host + path, or destination
	Why      string // rule or reason
}

// NewSummary returns an empty Summary.
func NewSummary() *Summary {
	return &Summary{hosts: map[string]*HostCount{}, refusals: map[Refusal]int{}}
}

// String names the sink.
func (s *Summary) String() string { return "summary" }

// WriteEvent counts ev.
func (s *Summary) WriteEvent(ev *Event) error {
	refused := ev.Decision == DecisionDeny || ev.Decision == DecisionWouldDeny
	switch ev.Kind {
	case KindDNS:
		if !refused {
			return nil
		}
	case KindConn:
		if ev.Decision == DecisionIntercept {
			return nil
		}
	case KindHTTP, KindKernel:
	default:
		return nil
	}
	host := eventHost(ev)
	s.mu.Lock()
	defer s.mu.Unlock()
	hc := s.hosts[host]
	if hc == nil {
		hc = &HostCount{Host: host}
		s.hosts[host] = hc
	}
	switch ev.Decision {
	case DecisionDeny:
		hc.Denied++
	case DecisionWouldDeny:
		hc.WouldDeny++
	case DecisionAllow, DecisionSplice:
		hc.Allowed++
	}
	if refused {
		target := host
		if ev.Kind == KindHTTP && ev.Path != "" {
			target = ev.Method + " " + host + ev.Path
		}
		why := ev.Rule
		if why == "" {
			why = ev.Reason
		}
		s.refusals[Refusal{Kind: ev.Kind, Decision: ev.Decision, Target: target, Why: why}]++
	}
	return nil
}

// eventHost is the best name for the far end of ev.
func eventHost(ev *Event) string {
	for _, h := range []string{ev.Host, ev.SNI, ev.QName, ev.Dst} {
		if h != "" {
			return h
		}
	}
	return "-"
}

// Hosts returns the per-host tallies, most active first.
func (s *Summary) Hosts() []HostCount {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]HostCount, 0, len(s.hosts))
	for _, h := range s.hosts {
		out = append(out, *h)
	}
	slices.SortFunc(out, func(a, b HostCount) int {
		if c := cmp.Compare(b.Allowed+b.Denied+b.WouldDeny, a.Allowed+a.Denied+a.WouldDeny); c != 0 {
			return c
		}
		return strings.Compare(a.Host, b.Host)
	})
	return out
}

// RefusalCount is a Refusal and how often it happened.
type RefusalCount struct {
	Refusal
	Count int
}

// TopRefusals returns the n most frequent refusals (all if n <= 0).
func (s *Summary) TopRefusals(n int) []RefusalCount {
	s.mu.Lock()
	out := make([]RefusalCount, 0, len(s.refusals))
	for r, c := range s.refusals {
		out = append(out, RefusalCount{r, c})
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b RefusalCount) int {
		if c := cmp.Compare(b.Count, a.Count); c != 0 {
			return c
		}
		if c := strings.Compare(a.Target, b.Target); c != 0 {
			return c
		}
		return strings.Compare(a.Kind, b.Kind)
	})
	if n > 0 && len(out) > n {
		out = out[:n]
	}
	return out
}

// Summary sizes: together they fit one 24-line screen.
const (
	summaryHosts    = 10
	summaryRefusals = 5
)

// WriteSummary writes the one-screen table: totals, the busiest hosts and
// the top refusals.
func (s *Summary) WriteSummary(w io.Writer) error {
	hosts := s.Hosts()
	var allowed, denied, would int
	for _, h := range hosts {
		allowed += h.Allowed
		denied += h.Denied
		would += h.WouldDeny
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "sluice: %d allowed, %d denied", allowed, denied)
	if would > 0 {
		fmt.Fprintf(tw, ", %d would be denied (audit mode)", would)
	}
	fmt.Fprintf(tw, " across %d hosts\n", len(hosts))
	if len(hosts) > 0 {
		fmt.Fprintln(tw, "HOST\tALLOWED\tDENIED\tWOULD-DENY")
		for i, h := range hosts {
			if i == summaryHosts {
				fmt.Fprintf(tw, "... %d more hosts\t\t\t\n", len(hosts)-summaryHosts)
				break
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\n", clip(h.Host, 60), h.Allowed, h.Denied, h.WouldDeny)
		}
	}
	if top := s.TopRefusals(summaryRefusals); len(top) > 0 {
		fmt.Fprintln(tw, "\nTOP REFUSALS\tCOUNT\tKIND\tRULE/REASON")
		for _, r := range top {
			what := r.Kind
			if r.Decision == DecisionWouldDeny {
				what += " (would deny)"
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", clip(r.Target, 60), r.Count, what, dash(r.Why))
		}
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("writing summary: %w", err)
	}
	return nil
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
