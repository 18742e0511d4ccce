package proxy

import (
	"fmt"
	"net/http"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/policy"
)

// The request gate: every intercepted request, HTTP/1.x or HTTP/2, goes
// through policy.Prepare (the same code `sluice policy explain` runs), is
// matched in its canonical form, and is forwarded in exactly that form
// (forwardTarget): the upstream never sees a target the policy did not
// match.

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

// badTarget is the 400 answer to a request whose method or target sluice
// refuses as ambiguous.
func (s *server) badTarget(r *http.Request, rs *reqState, host string, err error) (int, string) {
	rs.decision = audit.DecisionDeny
	rs.ev.Reason = "bad request: " + err.Error()
	rs.status = http.StatusBadRequest
	path := r.URL.Path
	if path == "" {
		path = "/"
	}
	return http.StatusBadRequest, fmt.Sprintf("sluice policy: %s %s%s refused: bad request: %s (sluice forwards only targets it can match unambiguously)\nhost: %s\nmethod: %s\npath: %s\n",
		r.Method, host, path, err, host, r.Method, path)
}
