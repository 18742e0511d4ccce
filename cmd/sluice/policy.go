package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/policy"
)

func init() { register(newPolicyCmd) }

// exitPolicyDenied is the exit status of `policy explain` for a refused request.
const exitPolicyDenied = 3

func newPolicyCmd(o *rootOptions) *cobra.Command {
	c := &cobra.Command{
		Use:   "policy",
		Short: "Check, explain and compare policies before deploying them",
		Example: `  sluice policy check policy.yaml
  sluice policy explain policy.yaml GET https://api.github.com/repos/o/r
  sluice policy diff old.yaml new.yaml --audit audit.jsonl`,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
	}
	c.AddCommand(newPolicyCheckCmd(o), newPolicyExplainCmd(o), newPolicyDiffCmd(o))
	return c
}

func newPolicyCheckCmd(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "check FILE...",
		Short: "Validate policies; print every problem as file:line:col",
		Long: `Validate one or more policies. Every problem is printed on stderr as
file:line:col: field: message, all of them at once. Warnings (for example a
plaintext Authorization value) are printed too but do not fail the check.
Exit status 1 when any file is invalid.`,
		Example:      "  sluice policy check policy.yaml testdata/policies/*.yaml",
		Args:         cobra.MinimumNArgs(1),
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			failed := 0
			for _, f := range args {
				p, err := policy.Load(f)
				var perrs policy.Errors
				switch {
				case errors.As(err, &perrs):
					fmt.Fprintln(o.stderr, perrs.Error())
					failed++
				case err != nil:
					fmt.Fprintf(o.stderr, "%s: %v\n", f, err)
					failed++
				default:
					for _, w := range p.Warnings {
						fmt.Fprintln(o.stderr, w.String())
					}
					fmt.Fprintf(o.stdout, "%s: ok (%d rules)\n", f, len(p.Rules))
				}
			}
			if failed > 0 {
				return &exitError{code: 1, err: fmt.Errorf("%d of %d policies invalid", failed, len(args))}
			}
			return nil
		},
	}
}

type policyExplainOptions struct {
	json    bool
	headers []string // "Name: value", for method override headers
}

func newPolicyExplainCmd(o *rootOptions) *cobra.Command {
	var eo policyExplainOptions
	c := &cobra.Command{
		Use:   "explain FILE METHOD URL",
		Short: "Show which rule a request matches and what sluice would do",
		Long: `Show what the policy does with one request: whether the name resolves, the
connection verdict (splice or intercept), the deciding rule and action, and
the headers that would be injected, with secret values shown as
<secret:NAME>. The method and the URL's path and query are checked exactly
as the proxy checks a request: a method not in upper case or an ambiguous
path ("//", dot segments, ';', '\', %2F ...) is refused with 400, and
--header adds request headers (method overrides such as
X-HTTP-Method-Override are checked against the rules). Exit status 0 when
the request is allowed, 3 when it is refused (in audit mode too: the answer
is the enforce-mode one).`,
		Example: `  sluice policy explain policy.yaml GET https://api.github.com/repos/o/r
  sluice policy explain policy.yaml POST api.openai.com/v1/chat/completions --json`,
		Args:         cobra.ExactArgs(3),
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := policy.Load(args[0])
			if err != nil {
				return err
			}
			hdr, err := explainHeaders(eo.headers)
			if err != nil {
				return err
			}
			e, err := p.ExplainRequest(args[1], args[2], hdr)
			if err != nil {
				return err
			}
			if eo.json {
				enc := json.NewEncoder(o.stdout)
				enc.SetIndent("", "  ")
				enc.SetEscapeHTML(false)
				enc.SetEscapeHTML(false)
				if err := enc.Encode(e); err != nil {
					return err
				}
			} else if err := writePolicyExplanation(o.stdout, e); err != nil {
				return err
			}
			if !e.Allowed {
				return &exitError{code: exitPolicyDenied}
			}
			return nil
		},
	}
	c.Flags().BoolVar(&eo.json, "json", false, "print the answer as JSON")
	c.Flags().StringArrayVarP(&eo.headers, "header", "H", nil, `request header "Name: value" (repeatable)`)
	return c
}

func writePolicyExplanation(w io.Writer, e *policy.Explanation) error {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	fmt.Fprintf(tw, "request:\t%s %s (port %d, path %s)\n", e.Method, e.URL, e.Port, e.Path)
	if e.Mode == "audit" {
		fmt.Fprintf(tw, "mode:\taudit (answers are enforce-mode; audit lets refused traffic through and records would_deny)\n")
	}
	if e.DNS != nil {
		s := "NXDOMAIN"
		if e.DNS.Allowed {
			s = "resolves"
		}
		if e.DNS.Rule != "" {
			s += " (rule " + e.DNS.Rule + ")"
		}
		if e.DNS.Remap != "" {
			s += ", answered with the addresses of " + e.DNS.Remap
		}
		if e.DNS.Direct {
			s += ", direct: kernel allow, no proxy"
		}
		fmt.Fprintf(tw, "dns:\t%s\n", s)
	} else {
		fmt.Fprintf(tw, "dns:\t- (address; cidrs rules apply)\n")
	}
	conn := e.Connection
	if e.ConnectionRule != "" {
		conn += " (rule " + e.ConnectionRule + ")"
	}
	fmt.Fprintf(tw, "connection:\t%s\n", conn)
	rule := "-"
	if e.Rule != "" {
		rule = fmt.Sprintf("%s (rules[%d])", e.Rule, e.RuleIndex)
	}
	fmt.Fprintf(tw, "rule:\t%s\n", rule)
	fmt.Fprintf(tw, "action:\t%s\n", e.Action)
	if e.Status != 0 {
		fmt.Fprintf(tw, "status:\t%d\n", e.Status)
	}
	if e.Target != "" && e.Allowed && e.Connection == "intercept" {
		fmt.Fprintf(tw, "forwarded:\t%s %s\n", e.Method, e.Target)
	}
	if e.Reason != "" {
		fmt.Fprintf(tw, "reason:\t%s\n", e.Reason)
	}
	if e.Remap != "" {
		fmt.Fprintf(tw, "remap:\t%s\n", e.Remap)
	}
	if e.Callback != nil {
		fmt.Fprintf(tw, "callback:\tPOST %s (ttl %s, timeout %s)\n", e.Callback.URL, e.Callback.TTL, e.Callback.Timeout)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(e.Headers) > 0 {
		fmt.Fprintln(w, "headers:")
		for _, h := range e.Headers {
			fmt.Fprintf(w, "  %s: %s (%s)\n", h.Name, h.Value, h.Type)
		}
	}
	return nil
}

type policyDiffOptions struct {
	audit string
	json  bool
}

func newPolicyDiffCmd(o *rootOptions) *cobra.Command {
	var do policyDiffOptions
	c := &cobra.Command{
		Use:   "diff OLD NEW --audit LOG.jsonl",
		Short: "Replay an audit log against two policies and list changed decisions",
		Long: `Replay the DNS queries, connections and HTTP requests recorded in an audit
log against two policies and list every decision that would change: requests
newly denied and newly allowed. Identical events are merged with a count.
Kernel, secret and other events are skipped. An http event without a
destination port is replayed on port 443.`,
		Example:      "  sluice policy diff policy.yaml policy-next.yaml --audit /var/log/sluice/audit.jsonl",
		Args:         cobra.ExactArgs(2),
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if do.audit == "" {
				return errors.New("--audit LOG.jsonl is required")
			}
			oldP, err := policy.Load(args[0])
			if err != nil {
				return err
			}
			newP, err := policy.Load(args[1])
			if err != nil {
				return err
			}
			f, err := os.Open(do.audit)
			if err != nil {
				return fmt.Errorf("reading audit log: %w", err)
			}
			defer f.Close()
			var obs []policy.Observation
			skipped := 0
			if err := audit.Decode(f, func(ev audit.Event) error {
				if o, ok := policyObservation(ev); ok {
					obs = append(obs, o)
				} else {
					skipped++
				}
				return nil
			}); err != nil {
				return fmt.Errorf("%s: %w", do.audit, err)
			}
			changes := policy.Diff(oldP, newP, obs)
			if do.json {
				return writePolicyDiffJSON(o.stdout, len(obs), skipped, changes)
			}
			return writePolicyDiff(o.stdout, len(obs), skipped, changes)
		},
	}
	c.Flags().StringVar(&do.audit, "audit", "", "audit log (JSON lines) to replay")
	c.Flags().BoolVar(&do.json, "json", false, "print the changes as JSON")
	return c
}

// policyObservation turns an audit event into something to replay.
func policyObservation(ev audit.Event) (policy.Observation, bool) {
	var port uint16
	var addr netip.Addr
	if ap, err := netip.ParseAddrPort(ev.Dst); err == nil {
		addr, port = ap.Addr(), ap.Port()
	}
	switch ev.Kind {
	case audit.KindDNS:
		if ev.QName == "" {
			return policy.Observation{}, false
		}
		return policy.Observation{Kind: "dns", Host: strings.TrimSuffix(ev.QName, ".")}, true
	case audit.KindConn:
		host := ev.SNI
		if host == "" {
			host = ev.Host
		}
		if host == "" && !addr.IsValid() {
			return policy.Observation{}, false
		}
		return policy.Observation{Kind: "conn", Host: host, Addr: addr, Port: port}, true
	case audit.KindHTTP:
		if ev.Host == "" || ev.Method == "" {
			return policy.Observation{}, false
		}
		if port == 0 {
			port = 443
		}
		path := ev.Path
		if i := strings.IndexAny(path, "?#"); i >= 0 {
			path = path[:i]
		}
		return policy.Observation{Kind: "http", Host: ev.Host, Port: port, Method: ev.Method, Path: path}, true
	}
	return policy.Observation{}, false
}

func policyObsTarget(o policy.Observation) string {
	switch o.Kind {
	case "dns":
		return o.Host
	case "conn":
		h := o.Host
		if h == "" {
			h = o.Addr.String()
		}
		return fmt.Sprintf("%s port %d", h, o.Port)
	}
	return fmt.Sprintf("%s %s%s port %d", o.Method, o.Host, o.Path, o.Port)
}

func policyDescribe(d policy.Decision) string {
	s := d.Verdict
	if d.Rule != "" {
		s += " by " + d.Rule
	} else if !d.Allowed {
		s += " (no rule)"
	}
	return s
}

func writePolicyDiff(w io.Writer, n, skipped int, changes []policy.Change) error {
	fmt.Fprintf(w, "replayed %d events (%d skipped): %d changed decisions\n", n, skipped, len(changes))
	for _, group := range []struct {
		title  string
		denied bool
	}{{"newly denied", true}, {"newly allowed", false}} {
		var rows []policy.Change
		for _, c := range changes {
			if c.NewlyDenied() == group.denied {
				rows = append(rows, c)
			}
		}
		if len(rows) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n%s (%d):\n", group.title, len(rows))
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  KIND\tTARGET\tCOUNT\tOLD\tNEW")
		for _, c := range rows {
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%s\n", c.Obs.Kind, policyObsTarget(c.Obs), c.Count, policyDescribe(c.Old), policyDescribe(c.New))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

type policyDiffJSON struct {
	Events  int                `json:"events"`
	Skipped int                `json:"skipped"`
	Changes []policyChangeJSON `json:"changes"`
}

type policyChangeJSON struct {
	Change  string `json:"change"` // newly_denied or newly_allowed
	Kind    string `json:"kind"`
	Target  string `json:"target"`
	Count   int    `json:"count"`
	Old     string `json:"old"`
	OldRule string `json:"old_rule,omitempty"`
	New     string `json:"new"`
	NewRule string `json:"new_rule,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

func writePolicyDiffJSON(w io.Writer, n, skipped int, changes []policy.Change) error {
	out := policyDiffJSON{Events: n, Skipped: skipped, Changes: []policyChangeJSON{}}
	for _, c := range changes {
		kind := "newly_allowed"
		if c.NewlyDenied() {
			kind = "newly_denied"
		}
		out.Changes = append(out.Changes, policyChangeJSON{Change: kind, Kind: c.Obs.Kind, Target: policyObsTarget(c.Obs), Count: c.Count,
			Old: c.Old.Verdict, OldRule: c.Old.Rule, New: c.New.Verdict, NewRule: c.New.Rule, Reason: c.New.Reason})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(out)
}
