package policy

import (
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// Explanation is what the policy would do with one request, for `sluice
// policy explain`. It holds no secret value: headers are Redacted.
type Explanation struct {
	Method string `json:"method"`
	URL    string `json:"url"`
	Host   string `json:"host"`
	Port   uint16 `json:"port"`
	// Path is the canonical path the proxy matches and forwards (the path
	// as given when the target is refused as ambiguous).
	Path string `json:"path"`
	// Target is the canonical request target forwarded upstream, "" when
	// the request is refused as ambiguous.
	Target string `json:"target,omitempty"`
	Mode   string `json:"mode"`

	// DNS is the resolver's answer for Host; nil for an IP address.
	DNS *ExplainDNS `json:"dns,omitempty"`
	// Connection is the proxy's verdict for the connection (deny, splice,
	// intercept) and the rule behind it.
	Connection     string `json:"connection"`
	ConnectionRule string `json:"connection_rule,omitempty"`

	// Allowed is the enforce-mode answer for the request as a whole.
	Allowed bool   `json:"allowed"`
	Action  string `json:"action"` // allow or deny
	Rule    string `json:"rule,omitempty"`
	// RuleIndex is the position of Rule in rules[], -1 without a rule.
	RuleIndex int    `json:"rule_index"`
	Reason    string `json:"reason,omitempty"`
	// Status is the proxy's answer to a refused intercepted request: 400
	// for a method or target it refuses as ambiguous, 403 for a policy
	// refusal; 0 otherwise (allowed, or refused at DNS or connection).
	Status int `json:"status,omitempty"`

	// What an allowed, intercepted request gets.
	Headers  []ExplainHeader  `json:"headers,omitempty"`
	Remap    string           `json:"remap,omitempty"`
	Callback *ExplainCallback `json:"callback,omitempty"`
	Direct   bool             `json:"direct,omitempty"`
}

// ExplainDNS is the resolver's view of a name.
type ExplainDNS struct {
	Allowed bool   `json:"allowed"`
	Rule    string `json:"rule,omitempty"`
	Remap   string `json:"remap,omitempty"` // the name resolved instead
	Direct  bool   `json:"direct,omitempty"`
}

// ExplainHeader is one injected header with its value redacted.
type ExplainHeader struct {
	Name  string `json:"name"`
	Type  string `json:"type"`
	Value string `json:"value"`
}

// ExplainCallback describes a credential callback.
type ExplainCallback struct {
	URL     string `json:"url"`
	TTL     string `json:"ttl"`
	Timeout string `json:"timeout"`
}

// String renders a remap as host or host:port.
func (r *Remap) String() string {
	if r == nil {
		return ""
	}
	if r.Port == 0 {
		return r.Host
	}
	return r.Host + ":" + strconv.Itoa(int(r.Port))
}

// Explain answers for one request given as a method and a URL (http:// or
// https://; a URL without a scheme is taken as https), as ExplainRequest
// without headers.
func (p *Policy) Explain(method, rawURL string) (*Explanation, error) {
	return p.ExplainRequest(method, rawURL, nil)
}

// ExplainRequest answers for one request given as a method, a URL and
// request headers (canonical keys; only the method override headers
// matter). The port defaults to the scheme's. The URL's path and query are
// the request target exactly as a client would send it (a fragment is
// dropped, as clients do) and go through the proxy's checks (Prepare,
// MatchPrepared, CleartextRefusal): a method that is not upper case or an
// ambiguous target is refused with Status 400. The request is allowed
// when its name resolves (or it is an address), the connection is not
// refused and the request matches an allow rule.
func (p *Policy) ExplainRequest(method, rawURL string, header map[string][]string) (*Explanation, error) {
	if !strings.Contains(rawURL, "://") {
		rawURL = "https://" + rawURL
	}
	scheme, rest, _ := strings.Cut(rawURL, "://")
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	target, _, _ := strings.Cut(rest[end:], "#")
	if target == "" || target[0] == '?' {
		target = "/" + target
	}
	u, err := url.Parse(scheme + "://" + rest[:end])
	if err != nil {
		return nil, fmt.Errorf("parsing URL: %w", err)
	}
	var port uint16
	switch u.Scheme {
	case "https":
		port = 443
	case "http":
		port = 80
	default:
		return nil, fmt.Errorf("parsing URL: scheme %q is not http or https", u.Scheme)
	}
	host := u.Hostname()
	if host == "" {
		return nil, fmt.Errorf("parsing URL %q: no host", rawURL)
	}
	if ps := u.Port(); ps != "" {
		v, err := strconv.ParseUint(ps, 10, 16)
		if err != nil || v == 0 {
			return nil, fmt.Errorf("parsing URL: port %q is not 1-65535", ps)
		}
		port = uint16(v)
	}
	prep, perr := Prepare(Request{Method: method, Target: target, Host: u.Host, Header: header})
	path := prep.Target.Path
	if perr != nil {
		path, _, _ = strings.Cut(target, "?")
	}
	e := &Explanation{Method: method, URL: u.String() + target, Host: host, Port: port, Path: path, Mode: p.Mode.String(), RuleIndex: -1}
	if perr == nil {
		e.Target = prep.Target.String()
	}

	dnsOK := true
	var nm NameMatch
	if _, isAddr := ipLiteral(host); !isAddr {
		nm = p.MatchName(host)
		e.DNS = &ExplainDNS{Allowed: nm.Allowed, Rule: nameOf(nm.Rule), Direct: nm.Direct}
		if nm.Remap != nil {
			e.DNS.Remap = nm.Remap.Host
		}
		dnsOK = nm.Allowed
	}
	cm := p.MatchConn(host, port)
	e.Connection, e.ConnectionRule = cm.Verdict.String(), nameOf(cm.Rule)

	var decider *Rule
	switch {
	case !dnsOK:
		decider = nm.Rule
		e.Reason = fmt.Sprintf("the name %s does not resolve in the sandbox", host)
		if decider != nil {
			e.Reason = fmt.Sprintf("rule %s denies the name %s (it does not resolve in the sandbox)", decider.Name, host)
		}
	case cm.Verdict == VerdictDeny:
		decider = cm.Rule
		if decider != nil {
			e.Reason = fmt.Sprintf("rule %s refuses connections to %s port %d", decider.Name, host, port)
		} else {
			e.Reason = fmt.Sprintf("no rule allows connections to %s port %d", host, port)
		}
	case cm.Verdict == VerdictSplice:
		// Spliced: the proxy never sees the requests; the connection's rule decides.
		decider = cm.Rule
		e.Allowed = true
	case perr != nil:
		e.Status = 400
		e.Reason = "bad request: " + perr.Error()
	default:
		rm := p.MatchPrepared(host, port, &prep)
		decider = rm.Rule
		e.Allowed = rm.Allowed
		e.Reason = rm.Reason
		if e.Allowed && u.Scheme == "http" {
			if why := rm.Rule.CleartextRefusal(); why != "" {
				e.Allowed, e.Reason = false, why
			}
		}
		if !e.Allowed {
			e.Status = 403
		}
	}
	e.Action = "deny"
	if e.Allowed {
		e.Action = "allow"
	}
	if decider != nil {
		e.Rule, e.RuleIndex = decider.Name, decider.Index
	}
	if e.Allowed && decider != nil {
		r := decider
		e.Direct = r.Direct
		e.Remap = r.Remap.String()
		if cm.Verdict == VerdictIntercept {
			for _, h := range r.Headers {
				e.Headers = append(e.Headers, ExplainHeader{Name: h.Name, Type: h.Type.String(), Value: h.Redacted()})
			}
			e.Headers = append(e.Headers, explainCredentials(r)...)
			if r.Callback != nil {
				e.Callback = &ExplainCallback{URL: r.Callback.URL, TTL: r.Callback.TTL.String(), Timeout: r.Callback.Timeout.String()}
			}
		}
	}
	return e, nil
}

func nameOf(r *Rule) string {
	if r == nil {
		return ""
	}
	return r.Name
}

// Observation is one recorded decision to replay against a policy: a DNS
// query (Name), a connection (Host and/or Addr, Port) or an HTTP request
// (Host, Port, Method, Path).
type Observation struct {
	Kind   string // "dns", "conn" or "http"
	Host   string // query name, SNI/Host, or request host
	Addr   netip.Addr
	Port   uint16
	Method string
	Path   string
}

// Decision is a policy's answer for an Observation.
type Decision struct {
	Allowed bool
	Verdict string // dns: allow/deny; conn: deny/splice/intercept; http: allow/deny
	Rule    string
	Reason  string
}

// Decide answers obs with p (enforce-mode answers).
func (p *Policy) Decide(obs Observation) Decision {
	switch obs.Kind {
	case "dns":
		m := p.MatchName(obs.Host)
		d := Decision{Allowed: m.Allowed, Verdict: "deny", Rule: nameOf(m.Rule)}
		if m.Allowed {
			d.Verdict = "allow"
		}
		return d
	case "conn":
		var m ConnMatch
		if obs.Host != "" {
			m = p.MatchConn(obs.Host, obs.Port)
		} else {
			m = p.MatchAddr(obs.Addr, obs.Port)
		}
		return Decision{Allowed: m.Verdict != VerdictDeny, Verdict: m.Verdict.String(), Rule: nameOf(m.Rule)}
	case "http":
		m := p.MatchRequest(obs.Host, obs.Port, obs.Method, obs.Path)
		d := Decision{Allowed: m.Allowed, Verdict: "deny", Rule: nameOf(m.Rule), Reason: m.Reason}
		if m.Allowed {
			d.Verdict = "allow"
		}
		return d
	}
	return Decision{Verdict: "deny", Reason: "unknown kind " + obs.Kind}
}

// Change is one observation whose answer differs between two policies.
type Change struct {
	Obs      Observation
	Old, New Decision
	Count    int // how many identical observations
}

// NewlyDenied reports whether the new policy refuses what the old allowed.
func (c Change) NewlyDenied() bool { return c.Old.Allowed && !c.New.Allowed }

// Diff replays observations against old and new and returns those whose
// allowed/denied answer changed, identical observations merged (Count), in
// order of first appearance.
func Diff(old, new *Policy, obs []Observation) []Change {
	var out []Change
	index := map[Observation]int{}
	for _, o := range obs {
		if i, seen := index[o]; seen {
			if i >= 0 {
				out[i].Count++
			}
			continue
		}
		a, b := old.Decide(o), new.Decide(o)
		if a.Allowed == b.Allowed {
			index[o] = -1
			continue
		}
		index[o] = len(out)
		out = append(out, Change{Obs: o, Old: a, New: b, Count: 1})
	}
	return out
}
