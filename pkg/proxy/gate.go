package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/policy"
)

// The request gate: every intercepted request, HTTP/1.x (h1.go) or HTTP/2
// (h2.go), passes gate, in these steps, before anything goes upstream:
//
//   - checkRequest: the Host and the connection's decision (conn.go) for
//     its process; matchRequest: the request in canonical form
//     (policy.Prepare, the same code `sluice policy explain` runs) against
//     the rules, with domain fronting, CONNECT and non-WebSocket upgrades
//     refused; then the cleartext check (credentials only over TLS unless
//     insecure_http) and audit mode; forwardTarget: the request is
//     forwarded in exactly the canonical form (the upstream never sees a
//     target the policy did not match); upstreamTarget: where it goes
//     (upstream.go dials it);
//   - shapeRequest (shape.go): the rule's request: section on the body
//     (max_body, deny_body, json, redact_body);
//   - authorize: the rule's headers, callback headers, and oauth2 or
//     aws_sigv4 (authn.go), with the values kept for echo redaction.
//
// Credentials come last: a request refused by the policy or by its body
// looks up no secret and calls no token endpoint or callback, and aws_sigv4
// signs the body the upstream receives, after redaction.
//
// reqState carries the request through the gate, upstream and the response
// filter (filter.go); finish emits its one "http" event.

// reqState is one intercepted request on its way upstream.
type reqState struct {
	ci         *connInfo
	scheme     string
	upHostPort string // URL authority of the upstream (pool key)
	outHost    string // Host header sent upstream
	plan       dialPlan
	inject     []injected
	secrets    *redactor
	status     int
	headerAt   time.Time
	host, path string
	rule       *policy.Rule
	errMsg     string
	expect     bool   // HTTP/1.1 Expect: 100-continue (the body comes after the check)
	upHost     string // the upstream's name: TLS server name and verification
	start      time.Time
	decision   string
	ev         audit.Event // the request's event, completed by finish
	shape      *bodyShape  // request: shaping of the body (shape.go)

	// Inline backing arrays: a request with up to four injected headers
	// needs no further allocation for its credentials.
	injectBuf [4]injected
	valueBuf  [4]string
	red       redactor
}

type injected struct{ name, value string }

// begin resets rs for request r on connection ci.
func (rs *reqState) begin(ci *connInfo, r *http.Request) {
	*rs = reqState{ci: ci, start: time.Now(), path: auditPath(r.URL.Path, r.URL.RawQuery), decision: audit.DecisionAllow}
	rs.ev = audit.Event{
		Kind:     audit.KindHTTP,
		CgroupID: ci.orig.CgroupID,
		PID:      ci.orig.PID,
		Comm:     ci.orig.Comm,
		Exe:      ci.exe,
		Method:   r.Method,
		Path:     rs.path,
	}
}

// gate runs the request gate on r (see above); both front ends call it. A
// non-zero code means the request is answered locally with code and the
// plain-text body (403 for a policy violation, 400 for an ambiguous target,
// 413, 403 or 400 from shaping, 502 for credentials that cannot be
// resolved); rs.status, rs.decision and rs.ev say why. After a refusal by
// shaping or credentials, part of r's body may have been read.
func (s *server) gate(ctx context.Context, r *http.Request, rs *reqState) (code int, body string) {
	if code, body = s.checkRequest(r, rs); code != 0 {
		rs.status = code
		return code, body
	}
	if code, body = s.shapeRequest(r, rs); code != 0 {
		return code, body
	}
	return s.authorize(ctx, r, rs)
}

// checkRequest checks request r against the policy and prepares rs for
// forwarding: rule and upstream target. It reads nothing of the body and
// resolves no credential. A non-zero code refuses the request.
func (s *server) checkRequest(r *http.Request, rs *reqState) (code int, body string) {
	ci := rs.ci
	reqHost := ci.host
	if r.Host != "" {
		h, ok := hostOnly(r.Host)
		if !ok {
			rs.host = r.Host
			rs.decision = audit.DecisionDeny
			rs.ev.Reason = "invalid Host"
			return s.refusal(r, rs, ci.host, "the Host header is not a valid host name")
		}
		reqHost = h
	}
	rs.host = reqHost
	pol := s.sb.Policy().ForProcess(ci.exe)
	if ci.denied != "" || pol == nil {
		rs.decision = audit.DecisionDeny
		rs.ev.Reason = ci.denied
		if pol == nil {
			rs.ev.Reason = "no policy"
		}
		return s.refusal(r, rs, reqHost, rs.ev.Reason)
	}
	port := ci.port()
	audited := pol.Mode == policy.ModeAudit
	prep, perr := prepare(r)
	rule, violation, bad := matchRequest(pol, r, ci, reqHost, &prep, perr)
	if bad != nil {
		// Ambiguous target or method: refused in audit mode too.
		return s.badTarget(r, rs, reqHost, bad)
	}
	if violation == "" && ci.proto != protoTLS {
		violation = rule.CleartextRefusal()
	}
	if ci.wouldDeny && violation == "" {
		violation = ci.reason
	}
	if violation != "" {
		rs.ev.Reason = violation
		if !audited {
			rs.decision = audit.DecisionDeny
			rs.rule = rule
			return s.refusal(r, rs, reqHost, violation)
		}
		rs.decision = audit.DecisionWouldDeny
		rs.ev.Rule = ruleName(rule)
		rule = nil // never inject credentials into a request enforce mode refuses
	}
	rs.rule = rule
	forwardTarget(r, &prep)
	s.upstreamTarget(r, rs, rule, reqHost, port)
	return 0, ""
}

// authorize renders the credentials of the allowed request's rule into
// rs.inject: headers and callback headers (credentials), then oauth2 and
// aws_sigv4 (ruleAuth, authn.go), which signs r as it will be forwarded.
// It runs after shaping. A failure answers 502.
func (s *server) authorize(ctx context.Context, r *http.Request, rs *reqState) (code int, body string) {
	rule := rs.rule
	if rule == nil {
		return 0, ""
	}
	msg := s.credentials(ctx, rs, rule, rs.host, rs.ci.port())
	if msg == "" && (rule.OAuth2 != nil || rule.AWSSigV4 != nil) {
		msg = s.ruleAuth(ctx, r, rs, rule) // authn.go
	}
	if msg != "" {
		rs.decision = audit.DecisionError
		rs.ev.Reason = msg
		rs.status = http.StatusBadGateway
		return http.StatusBadGateway, "sluice: " + msg + "\n"
	}
	return 0, ""
}

// matchRequest decides request r (canonical form prep, or the error perr
// of preparing it) for host reqHost on connection ci with pol: the rule
// that matched and, when the request is not allowed, why. bad is the error
// of a method or target sluice refuses as ambiguous.
func matchRequest(pol *policy.Policy, r *http.Request, ci *connInfo, reqHost string, prep *policy.Prepared, perr error) (rule *policy.Rule, violation string, bad error) {
	port := ci.port()
	switch {
	case r.Method == http.MethodConnect:
		violation = "CONNECT is not allowed through sluice (the connection is already transparent)"
	case r.Header.Get("Upgrade") != "" && !strings.EqualFold(strings.TrimSpace(r.Header.Get("Upgrade")), "websocket"):
		// After a 101 the bytes are no longer HTTP requests sluice can
		// check (h2c, TLS upgrades): only WebSocket may switch protocols.
		violation = "only WebSocket protocol upgrades are allowed"
	case ci.proto == protoTLS && r.URL.Scheme == "http":
		violation = "an http:// absolute URI on a TLS connection is not allowed"
	case perr != nil:
		return nil, "", perr
	case ci.viaCIDR:
		// Admitted by address: the CIDR rules decide, whatever the Host says.
		rm := pol.MatchPrepared(ci.orig.Dst.Addr().String(), port, prep)
		rule = rm.Rule
		if !rm.Allowed {
			violation = rm.Reason
			if violation == "" {
				violation = "no rule allows this request"
			}
		}
	default:
		if reqHost != ci.host {
			a, b := pol.MatchConn(ci.host, port), pol.MatchConn(reqHost, port)
			if a.Verdict == policy.VerdictDeny || b.Verdict == policy.VerdictDeny || a.Rule != b.Rule {
				violation = fmt.Sprintf("Host %s differs from the TLS server name %s and no single rule allows both", reqHost, ci.host)
				if ci.proto != protoTLS {
					violation = fmt.Sprintf("Host %s differs from the connection's host %s and no single rule allows both", reqHost, ci.host)
				}
				break
			}
		}
		rm := pol.MatchPrepared(reqHost, port, prep)
		rule = rm.Rule
		if !rm.Allowed {
			violation = rm.Reason
			if violation == "" {
				violation = "no rule allows this request"
			}
		}
	}
	return rule, violation, nil
}

// prepare puts r in canonical form: its method, target and method
// overrides (policy.Prepare). r.RequestURI is the target as received: the
// request line's target in HTTP/1.x, :path in HTTP/2.
func prepare(r *http.Request) (policy.Prepared, error) {
	target := r.RequestURI
	if target == "" {
		target = r.URL.RequestURI()
	}
	return policy.Prepare(policy.Request{Method: r.Method, Target: target, Host: r.Host, Header: r.Header})
}

// forwardTarget makes r's upstream request target the canonical one. An
// Opaque path is sent as it is by both writeRequest (HTTP/1.1 upstreams of
// HTTP/1.x clients) and http.Transport (URL.RequestURI).
func forwardTarget(r *http.Request, pr *policy.Prepared) {
	r.URL.Opaque = pr.Target.Path
	r.URL.RawPath = ""
	r.URL.RawQuery = pr.Target.Query
	r.URL.ForceQuery = false
}

// prepareUpstream makes req what the upstream receives, on both front ends:
// hop-by-hop headers removed (RFC 9110 7.6.1, with those named in
// Connection; "Te: trailers" kept, a WebSocket upgrade re-announced), the
// rule's credentials injected (replacing same-named client headers), the
// adjustments of a request carrying secrets (upstreamRequest, filter.go)
// and the Host of the upstream target. It returns the upgrade the client
// asked for ("" for none).
func (rs *reqState) prepareUpstream(req *http.Request) (upgrade string) {
	upgrade = upgradeType(req.Header)
	trailers := httpguts.HeaderValuesContainsToken(req.Header["Te"], "trailers")
	removeHopByHop(req.Header)
	if trailers {
		req.Header["Te"] = []string{"trailers"}
	}
	if upgrade != "" {
		req.Header["Connection"] = []string{"Upgrade"}
		req.Header["Upgrade"] = []string{upgrade}
	}
	for _, inj := range rs.inject {
		req.Header.Del(inj.name)
		req.Header.Set(inj.name, inj.value)
	}
	rs.upstreamRequest(req.Header)
	req.Host = rs.outHost
	req.Close = false
	return upgrade
}

// upstreamTarget sets where an allowed request goes (rs.scheme,
// rs.upHost, rs.upHostPort, rs.plan) and the Host it is sent with
// (rs.outHost): the connection's destination, or the rule's remap target.
func (s *server) upstreamTarget(r *http.Request, rs *reqState, rule *policy.Rule, reqHost string, port uint16) {
	ci := rs.ci
	rs.scheme = "http"
	if ci.proto == protoTLS {
		rs.scheme = "https"
	}
	upHost, upPort := reqHost, port
	rs.plan = dialPlan{addr: ci.orig.Dst}
	if rule != nil && rule.Remap != nil {
		upHost = rule.Remap.Host
		if rule.Remap.Port != 0 {
			upPort = rule.Remap.Port
		}
		rs.plan = dialPlan{addr: netip.AddrPortFrom(ci.orig.Dst.Addr(), upPort)}
		if s.p.cfg.Resolve != nil {
			rs.plan = dialPlan{resolve: upHost, port: upPort}
		}
		rs.outHost = upHost
		if !(rs.scheme == "https" && upPort == 443 || rs.scheme == "http" && upPort == 80) {
			rs.outHost = joinHostPort(upHost, upPort)
		}
	} else if ci.viaCIDR {
		// Verify (TLS) and pool by the connection's name; keep the Host as sent.
		upHost = ci.host
		if upHost == "" {
			upHost = ci.orig.Dst.Addr().String()
		}
		rs.outHost = r.Host
	} else {
		rs.outHost = r.Host
	}
	if rs.outHost == "" {
		rs.outHost = upHost
	}
	rs.upHost = upHost
	if upHost == ci.host && upPort == port && ci.hostPort != "" {
		rs.upHostPort = ci.hostPort
	} else {
		rs.upHostPort = joinHostPort(upHost, upPort)
	}
}

// credentials renders the rule's headers and callback headers into
// rs.inject. It returns a message (naming secrets, never values) on failure.
func (s *server) credentials(ctx context.Context, rs *reqState, rule *policy.Rule, host string, port uint16) string {
	values := rs.valueBuf[:0]
	rs.inject = rs.injectBuf[:0]
	lk := secretLookup{s: s, ctx: ctx, values: values}
	for _, h := range rule.Headers {
		lk.failed = ""
		v, err := h.Render(lk.lookup)
		if err != nil {
			failed := lk.failed
			if failed == "" && len(h.Secrets) > 0 {
				failed = h.Secrets[0]
			}
			if failed == "" {
				return fmt.Sprintf("header %s of rule %s could not be rendered", h.Name, rule.Name)
			}
			return fmt.Sprintf("secret %s for header %s of rule %s could not be resolved", failed, h.Name, rule.Name)
		}
		if h.Type != policy.HeaderPlaintext {
			lk.values = append(lk.values, v)
		}
		rs.inject = append(rs.inject, injected{name: h.Name, value: v})
	}
	values = lk.values
	if rule.Callback != nil {
		if s.sb.Callbacks == nil {
			return "credential callback failed"
		}
		hdrs, err := s.sb.Callbacks.CallbackHeaders(ctx, s.sb.Name, host, port, rule.Callback)
		if err != nil {
			s.log.Debug("credential callback failed", "rule", rule.Name, "host", host, "err", err)
			return "credential callback failed"
		}
		for k, v := range hdrs {
			rs.inject = append(rs.inject, injected{name: k, value: v})
			values = append(values, v)
		}
	}
	if rs.red.init(values) {
		rs.secrets = &rs.red
	}
	return ""
}

// secretLookup resolves the secrets of one request's headers (per request:
// a rotated secret takes effect on the next request) and collects the
// values for echo redaction.
type secretLookup struct {
	s      *server
	ctx    context.Context
	values []string
	failed string // the secret that could not be resolved
}

func (l *secretLookup) lookup(name string) (string, error) {
	if l.s.sb.Secrets == nil {
		l.failed = name
		return "", errors.New("no secret store")
	}
	val, err := l.s.sb.Secrets.Lookup(l.ctx, l.s.sb.Name, name)
	if err != nil {
		l.failed = name
		return "", err
	}
	l.values = append(l.values, val)
	return val, nil
}

// refusal is the 403 answer to a request the policy refuses, with a body
// an agent can read.
func (s *server) refusal(r *http.Request, rs *reqState, host, reason string) (int, string) {
	rs.status = http.StatusForbidden
	return http.StatusForbidden, refusalBody(r, host, reason)
}

// badTarget is the 400 answer to a request whose method or target sluice
// refuses as ambiguous.
func (s *server) badTarget(r *http.Request, rs *reqState, host string, err error) (int, string) {
	rs.decision = audit.DecisionDeny
	rs.ev.Reason = "bad request: " + err.Error()
	rs.status = http.StatusBadRequest
	return http.StatusBadRequest, refusalBody(r, host, "bad request: "+err.Error()+" (sluice forwards only targets it can match unambiguously)")
}

// refusalBody is the plain-text body of every refusal of a request (policy,
// bad target, request shaping), naming host, method and path.
func refusalBody(r *http.Request, host, reason string) string {
	path := r.URL.Path
	if path == "" {
		path = "/"
	}
	return fmt.Sprintf("sluice policy: %s %s%s refused: %s\nhost: %s\nmethod: %s\npath: %s\n",
		r.Method, host, path, reason, host, r.Method, path)
}

// finish emits the request's event.
func (s *server) finish(rs *reqState) {
	if rs.errMsg != "" {
		rs.decision = audit.DecisionError
		rs.ev.Reason = rs.errMsg
	}
	ev := rs.ev
	ev.Decision = rs.decision
	ev.Host = rs.host
	if rs.rule != nil {
		ev.Rule = rs.rule.Name
	}
	rs.shapeEvent(&ev)
	ev.Status = rs.status
	if !rs.headerAt.IsZero() {
		ev.LatencyMS = float64(rs.headerAt.Sub(rs.start).Microseconds()) / 1000
	}
	if len(rs.inject) > 0 {
		ev.Injected = make([]string, len(rs.inject))
		for i, h := range rs.inject {
			ev.Injected[i] = h.name
		}
	}
	s.emit(ev)
}
