package policy

import (
	"net/netip"
	"time"
)

// Mode is the policy's top-level enforcement mode.
type Mode int

const (
	// ModeEnforce refuses what the policy does not allow.
	ModeEnforce Mode = iota
	// ModeAudit allows everything and records what enforce would have refused.
	ModeAudit
)

func (m Mode) String() string {
	if m == ModeAudit {
		return "audit"
	}
	return "enforce"
}

// Action is what a rule does with traffic it matches.
type Action int

const (
	// ActionAllow lets matching traffic through.
	ActionAllow Action = iota
	// ActionDeny refuses matching traffic.
	ActionDeny
)

func (a Action) String() string {
	if a == ActionDeny {
		return "deny"
	}
	return "allow"
}

// HeaderType says where a header value comes from.
type HeaderType int

const (
	// HeaderSecret values contain {NAME} placeholders resolved from a secret store at request time.
	HeaderSecret HeaderType = iota
	// HeaderPlaintext values are used as written.
	HeaderPlaintext
	// HeaderOpaque values are write-only: given once, stored encrypted, never shown.
	HeaderOpaque
)

// Policy is a parsed, validated and compiled policy. It is immutable after
// Parse returns and safe for concurrent use.
type Policy struct {
	Version int
	Mode    Mode
	// IPv6 is false when the policy sets `ipv6: false`: the resolver then
	// answers AAAA queries with no records.
	IPv6  bool
	Rules []*Rule
	// Limits are the sandbox's resource fences as written (zero: the
	// default); Fences fills in the defaults.
	Limits Limits
	// Env holds the placeholder variables of every rule, merged.
	Env map[string]string

	// File is the name the policy was parsed from (for messages).
	File string
	// Warnings are problems that do not make the policy invalid, such as a
	// plaintext Authorization value, in file order.
	Warnings []Problem

	m *matcher
	// procs caches the per-process views (nil without processes: rules);
	// proc is set on a view (ForProcess).
	procs *procCache
	proc  *procView
}

// Rule is one compiled entry of rules[].
type Rule struct {
	Index    int // position in rules[]
	Name     string
	Hosts    []string
	Paths    []string
	Methods  []string // upper case; empty means any
	Ports    []uint16 // empty means any
	CIDRs    []netip.Prefix
	Action   Action
	Direct   bool
	Headers  []Header
	Remap    *Remap
	Callback *Callback
	Env      map[string]string
	// InsecureHTTP lets the rule inject credentials into cleartext HTTP
	// (insecure_http: true); see CleartextRefusal.
	InsecureHTTP bool
	// CaseInsensitivePaths folds ASCII case in paths patterns and request
	// paths (case_insensitive_paths: true).
	CaseInsensitivePaths bool
	OAuth2               *OAuth2   // mint a bearer token (credentials.go)
	AWSSigV4             *AWSSigV4 // sign with AWS SigV4 (credentials.go)
	// Request shapes request bodies (nil: none); see shape.go.
	Request *RequestShaping
	// Processes limits the rule to connections opened by these
	// executables (empty: any process); see ProcessMatches.
	Processes []string
	Listen    *Listen // a listen rule: inbound connections (listen.go)
}

// NeedsIntercept reports whether traffic for the rule must be terminated at
// HTTP level (headers, paths, methods, remap or a callback).
func (r *Rule) NeedsIntercept() bool {
	return len(r.Headers) > 0 || len(r.Paths) > 0 || len(r.Methods) > 0 || r.Remap != nil || r.Callback != nil ||
		r.OAuth2 != nil || r.AWSSigV4 != nil || r.Request != nil
}

// Header is one header to inject.
type Header struct {
	Name  string
	Type  HeaderType
	Value string
	// Secrets lists the {NAME} placeholders of Value, in order.
	Secrets []string
}

// Remap sends traffic for a rule's hosts to another host (a mirror).
type Remap struct {
	Host string
	Port uint16 // 0 keeps the original port
}

// Callback asks an external service for the headers to inject.
type Callback struct {
	URL     string
	TTL     time.Duration
	Timeout time.Duration
}

// CIDRRule is a static address range the kernel allowlist carries.
type CIDRRule struct {
	Prefix netip.Prefix
	Ports  []uint16 // empty means any
	Direct bool     // kernel allow without the proxy
	Deny   bool
	Rule   *Rule
}

// NameMatch is the resolver's view of a DNS name.
type NameMatch struct {
	// Allowed is the enforce-mode answer: may this name be resolved?
	Allowed bool
	// Rule is the deciding rule, nil when no rule matched.
	Rule *Rule
	// Remap is the target to resolve instead, nil without a remap.
	Remap *Remap
	// Direct is true when the deciding rule is a direct (no proxy) rule.
	Direct bool
}

// Verdict is what the proxy does with one connection.
type Verdict int

const (
	// VerdictDeny closes the connection.
	VerdictDeny Verdict = iota
	// VerdictSplice copies bytes to the original destination untouched.
	VerdictSplice
	// VerdictIntercept terminates TLS (or parses plain HTTP) and applies
	// per-request rules.
	VerdictIntercept
)

func (v Verdict) String() string {
	switch v {
	case VerdictSplice:
		return "splice"
	case VerdictIntercept:
		return "intercept"
	default:
		return "deny"
	}
}

// ConnMatch is the proxy's per-connection decision in enforce mode.
type ConnMatch struct {
	Verdict Verdict
	Rule    *Rule // nil when no rule matched
	// Reason explains a refusal when the policy has more to say than "no
	// rule matched" (a rule that applies to other processes only).
	Reason string
}

// RequestMatch is the proxy's per-request decision in enforce mode.
type RequestMatch struct {
	Allowed bool
	Rule    *Rule // nil when no rule matched
	// Reason explains a refusal in words an agent can act on.
	Reason string
}
