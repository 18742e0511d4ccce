package policy

import (
	"fmt"
	"net/textproto"
	"net/url"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// OAuth2 grants: the YAML word of `oauth2.grant`. Grants is the one table the
// parser, the schema test and explain read.
const (
	GrantClientCredentials = "client_credentials"
	GrantRefreshToken      = "refresh_token"
	GrantJWTBearer         = "jwt_bearer" // RFC 7523, e.g. a Google service account
)

// Grants lists the legal values of oauth2.grant, in documentation order.
var Grants = []string{GrantClientCredentials, GrantRefreshToken, GrantJWTBearer}

// oauth2Fields and sigv4Fields are the fields of the two blocks (the schema
// test compares them with schema.json).
var (
	oauth2Fields = []string{"token_url", "grant", "client_id", "client_secret", "refresh_token", "private_key", "scopes", "audience"}
	sigv4Fields  = []string{"region", "service", "access_key_id", "secret_access_key", "session_token"}
)

// OAuth2 is a rule's `oauth2:` block: sluice mints an access token outside
// the sandbox and injects `Authorization: Bearer <token>`. Secret inputs
// are secret NAMES (the {NAME} placeholders of the policy), resolved per
// request for the sandbox.
type OAuth2 struct {
	TokenURL string
	Grant    string // one of Grants
	ClientID string
	// ClientSecret, RefreshToken and PrivateKey are secret names ("": unset).
	ClientSecret string
	RefreshToken string
	PrivateKey   string
	Scopes       []string
	Audience     string
}

// Endpoint is the host of the token URL (for display).
func (o *OAuth2) Endpoint() string {
	if u, err := url.Parse(o.TokenURL); err == nil {
		return u.Host
	}
	return ""
}

// Redacted is the display form of the injected value, without secrets:
// "Bearer <oauth2:agent@auth.corp.example>" (the client id, else the name
// of the private key's secret, else the grant).
func (o *OAuth2) Redacted() string {
	id := o.ClientID
	if id == "" {
		id = o.PrivateKey
	}
	if id == "" {
		id = o.Grant
	}
	return "Bearer <oauth2:" + id + "@" + o.Endpoint() + ">"
}

// Secrets lists the secret names the block reads.
func (o *OAuth2) Secrets() []string {
	var out []string
	for _, n := range []string{o.ClientSecret, o.RefreshToken, o.PrivateKey} {
		if n != "" {
			out = append(out, n)
		}
	}
	return out
}

// AWSSigV4 is a rule's `aws_sigv4:` block: sluice drops any signature the
// sandbox sent and signs the forwarded request with AWS Signature Version 4.
type AWSSigV4 struct {
	Region  string
	Service string
	// AccessKeyID is the key id as written, or "" when AccessKeyIDSecret
	// names the secret holding it.
	AccessKeyID       string
	AccessKeyIDSecret string
	// SecretAccessKey and SessionToken are secret names ("": no token).
	SecretAccessKey string
	SessionToken    string
}

// Redacted is the display form: "<aws_sigv4:s3/us-east-1>".
func (a *AWSSigV4) Redacted() string {
	return "<aws_sigv4:" + a.Service + "/" + a.Region + ">"
}

// secretRef parses a value that must be exactly one {NAME} placeholder.
func (ps *parser) secretRef(n *yaml.Node, path, example string) (string, bool) {
	s, ok := ps.str(n, path)
	if !ok {
		return "", false
	}
	names, msg := placeholders(s)
	if msg != "" {
		ps.errf(n, path, "%s", msg)
		return "", false
	}
	if len(names) != 1 || s != "{"+names[0]+"}" {
		ps.errf(n, path, "expect one secret placeholder such as %q; secret values never go in the policy", example)
		return "", false
	}
	return names[0], true
}

func (ps *parser) oauth2(path string, n *yaml.Node) *OAuth2 {
	fields, ok := ps.mapping(n, path, oauth2Fields...)
	if !ok {
		return nil
	}
	o := &OAuth2{}
	good := true
	nodes := map[string]*yaml.Node{}
	for _, f := range fields {
		fp := join(path, f.key.Value)
		nodes[f.key.Value] = f.val
		var ok bool
		switch f.key.Value {
		case "token_url":
			if o.TokenURL, ok = ps.str(f.val, fp); ok {
				u, err := url.Parse(o.TokenURL)
				switch {
				case err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "":
					ps.errf(f.val, fp, "%q is not an https:// URL", o.TokenURL)
					ok = false
				case u.User != nil:
					ps.errf(f.val, fp, "the URL carries credentials; use client_id and client_secret")
					ok = false
				}
			}
		case "grant":
			if o.Grant, ok = ps.str(f.val, fp); ok && !slices.Contains(Grants, o.Grant) {
				ps.errf(f.val, fp, "%q is not one of %s", o.Grant, strings.Join(Grants, ", "))
				ok = false
			}
		case "client_id":
			if o.ClientID, ok = ps.str(f.val, fp); ok && (o.ClientID == "" || strings.ContainsAny(o.ClientID, "{}\r\n\x00")) {
				ps.errf(f.val, fp, "expect a client id (not secret, written as is), got %q", o.ClientID)
				ok = false
			}
		case "client_secret":
			o.ClientSecret, ok = ps.secretRef(f.val, fp, "{CLIENT_SECRET}")
		case "refresh_token":
			o.RefreshToken, ok = ps.secretRef(f.val, fp, "{REFRESH_TOKEN}")
		case "private_key":
			o.PrivateKey, ok = ps.secretRef(f.val, fp, "{SA_KEY}")
		case "scopes":
			var items []*yaml.Node
			o.Scopes, items = ps.strs(f.val, fp)
			ok = items != nil || len(f.val.Content) == 0
			for j, s := range o.Scopes {
				if s == "" || strings.ContainsAny(s, " \t\r\n\"\\") {
					ps.errf(items[j], fmt.Sprintf("%s[%d]", fp, j), "%q is not an OAuth2 scope (no spaces, quotes or backslashes)", s)
					ok = false
				}
			}
		case "audience":
			if o.Audience, ok = ps.str(f.val, fp); ok && strings.ContainsAny(o.Audience, "\r\n\x00") {
				ps.errf(f.val, fp, "contains CR, LF or NUL")
				ok = false
			}
		}
		good = good && ok
	}
	required := func(name, why string) {
		if nodes[name] == nil {
			ps.errf(n, join(path, name), "required%s", why)
			good = false
		}
	}
	required("token_url", "")
	required("grant", "; expect one of "+strings.Join(Grants, ", "))
	if !good {
		return nil
	}
	forbid := func(name string) {
		if nodes[name] != nil {
			ps.errf(nodes[name], join(path, name), "not used by grant %s; drop it", o.Grant)
			good = false
		}
	}
	switch o.Grant {
	case GrantClientCredentials:
		required("client_id", " by grant client_credentials")
		required("client_secret", " by grant client_credentials")
		forbid("refresh_token")
		forbid("private_key")
	case GrantRefreshToken:
		required("refresh_token", " by grant refresh_token")
		forbid("private_key")
	case GrantJWTBearer:
		required("private_key", " by grant jwt_bearer (a service-account JSON or a PEM key)")
		forbid("refresh_token")
		forbid("client_secret")
	}
	if !good {
		return nil
	}
	return o
}

func (ps *parser) awsSigV4(path string, n *yaml.Node) *AWSSigV4 {
	fields, ok := ps.mapping(n, path, sigv4Fields...)
	if !ok {
		return nil
	}
	a := &AWSSigV4{}
	good := true
	seen := map[string]bool{}
	for _, f := range fields {
		fp := join(path, f.key.Value)
		seen[f.key.Value] = true
		var ok bool
		switch f.key.Value {
		case "region", "service":
			var s string
			if s, ok = ps.str(f.val, fp); ok && !validAWSWord(s) {
				ps.errf(f.val, fp, "%q is not an AWS %s name; expect for example %s", s, f.key.Value, map[string]string{"region": "us-east-1", "service": "s3"}[f.key.Value])
				ok = false
			}
			if f.key.Value == "region" {
				a.Region = s
			} else {
				a.Service = s
			}
		case "access_key_id":
			var s string
			if s, ok = ps.str(f.val, fp); !ok {
				break
			}
			if strings.ContainsAny(s, "{}") {
				a.AccessKeyIDSecret, ok = ps.secretRef(f.val, fp, "{AWS_ACCESS_KEY_ID}")
			} else if !validAWSWord(s) {
				ps.errf(f.val, fp, "%q is not an access key id; expect for example AKIAIOSFODNN7EXAMPLE or a placeholder such as {AWS_ACCESS_KEY_ID}", s)
				ok = false
			} else {
				a.AccessKeyID = s
			}
		case "secret_access_key":
			a.SecretAccessKey, ok = ps.secretRef(f.val, fp, "{AWS_SECRET_ACCESS_KEY}")
		case "session_token":
			a.SessionToken, ok = ps.secretRef(f.val, fp, "{AWS_SESSION_TOKEN}")
		}
		good = good && ok
	}
	for _, name := range []string{"region", "service", "access_key_id", "secret_access_key"} {
		if !seen[name] {
			ps.errf(n, join(path, name), "required")
			good = false
		}
	}
	if !good {
		return nil
	}
	return a
}

func validAWSWord(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// credentialChecks reports the combinations a rule's oauth2 and aws_sigv4
// blocks cannot be in: with each other, with a header setting
// Authorization, on a deny or direct rule.
func (ps *parser) credentialChecks(r *Rule, path string, oauthNode, sigNode, headersNode *yaml.Node) {
	if oauthNode != nil && sigNode != nil {
		ps.errf(sigNode, join(path, "aws_sigv4"), "a rule cannot have both oauth2 and aws_sigv4 (each sets Authorization); split the hosts into two rules")
	}
	for _, c := range []struct {
		n    *yaml.Node
		name string
	}{{oauthNode, "oauth2"}, {sigNode, "aws_sigv4"}} {
		if c.n == nil {
			continue
		}
		fp := join(path, c.name)
		switch {
		case r.Action == ActionDeny:
			ps.errf(c.n, fp, "a deny rule cannot have %s", c.name)
		case r.Direct:
			ps.errf(c.n, fp, "a direct rule bypasses the proxy, so it cannot use %s; drop direct: true or %s", c.name, c.name)
		}
		for _, h := range r.Headers {
			if textproto.CanonicalMIMEHeaderKey(h.Name) == "Authorization" {
				ps.errf(headersNode, join(path, "headers"), "a header sets Authorization, which %s sets; drop the header or %s", c.name, c.name)
			}
		}
	}
}

// explainCredentials shows what a rule's oauth2 or aws_sigv4 block injects,
// without secrets: Authorization "Bearer <oauth2:agent@auth.corp.example>"
// (type oauth2) or "<aws_sigv4:s3/us-east-1>" (type aws_sigv4).
func explainCredentials(r *Rule) []ExplainHeader {
	var out []ExplainHeader
	if r.OAuth2 != nil {
		out = append(out, ExplainHeader{Name: "Authorization", Type: "oauth2", Value: r.OAuth2.Redacted()})
	}
	if r.AWSSigV4 != nil {
		out = append(out, ExplainHeader{Name: "Authorization", Type: "aws_sigv4", Value: r.AWSSigV4.Redacted()})
	}
	return out
}
