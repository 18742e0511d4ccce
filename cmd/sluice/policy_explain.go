package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sluice-dev/sluice/pkg/policy"
)

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
	if len(e.Processes) > 0 {
		fmt.Fprintf(tw, "processes:\tonly %s\n", strings.Join(e.Processes, ", "))
	}
	if e.Request != "" {
		fmt.Fprintf(tw, "shaping:\t%s\n", e.Request)
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
