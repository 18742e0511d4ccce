package policy

import (
	"fmt"

	"gopkg.in/yaml.v3"
)

// The request gate's rule fields: insecure_http and case_insensitive_paths.

// gateFields are the rule fields parsed by gateField.
var gateFields = []string{"insecure_http", "case_insensitive_paths"}

// gateField parses one of gateFields into r.
func (ps *parser) gateField(r *Rule, f field, fp string) {
	b, ok := ps.boolean(f.val, fp)
	if !ok {
		return
	}
	switch f.key.Value {
	case "insecure_http":
		r.InsecureHTTP = b
	case "case_insensitive_paths":
		r.CaseInsensitivePaths = b
	}
}

// gateChecks reports the combinations of gateFields that make no sense
// and warns about insecure_http.
func (ps *parser) gateChecks(r *Rule, path string, fields []field) {
	var n *yaml.Node
	for _, f := range fields {
		if f.key.Value == "insecure_http" {
			n = f.val
		}
	}
	if n == nil || !r.InsecureHTTP {
		return
	}
	fp := join(path, "insecure_http")
	switch {
	case r.Action == ActionDeny:
		ps.errf(n, fp, "a deny rule injects nothing; drop insecure_http")
	case r.Direct:
		ps.errf(n, fp, "a direct rule bypasses the proxy and injects nothing; drop insecure_http")
	case !r.InjectsCredentials():
		ps.warnf(n, fp, "has no effect: the rule injects no secret, opaque or callback header, oauth2 token or aws_sigv4 signature")
	default:
		ps.warnf(n, fp, "the rule's credentials are sent in cleartext over http://, readable by anyone on the path to the upstream; drop insecure_http and use https")
	}
}

// InjectsCredentials reports whether the rule adds a header whose value
// is not written in the policy: a secret, opaque or callback header, an
// OAuth2 bearer token or an AWS SigV4 signature.
func (r *Rule) InjectsCredentials() bool {
	if r == nil {
		return false
	}
	if r.Callback != nil || r.OAuth2 != nil || r.AWSSigV4 != nil {
		return true
	}
	for _, h := range r.Headers {
		if h.Type != HeaderPlaintext {
			return true
		}
	}
	return false
}

// CleartextRefusal is the reason a request allowed by r is refused when
// the connection to the upstream is not TLS, or "" when it may go: a rule
// that injects credentials (InjectsCredentials) sends them only over TLS
// unless it sets insecure_http: true.
func (r *Rule) CleartextRefusal() string {
	if !r.InjectsCredentials() || r.InsecureHTTP {
		return ""
	}
	return fmt.Sprintf("rule %s injects credentials, which are only sent over TLS (https://); this request is cleartext HTTP. Use https, or set insecure_http: true on the rule", r.Name)
}
