package policy

import (
	"fmt"
	"net/netip"
	"net/textproto"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Defaults of a callback.
const (
	DefaultCallbackTTL     = 5 * time.Minute
	DefaultCallbackTimeout = 2 * time.Second
)

// maxNodes bounds the YAML nodes a policy may expand to (aliases
// included), so that a small file cannot make Parse do unbounded work.
const maxNodes = 1 << 20

// Load reads and parses the policy at path.
func Load(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading policy: %w", err)
	}
	return Parse(path, data)
}

// Parse validates and compiles a policy. file names the source in
// messages. On failure the error is an Errors listing every problem with
// its file:line:col; warnings do not make it fail and are returned in
// Policy.Warnings.
func Parse(file string, data []byte) (*Policy, error) {
	ps := &parser{file: file}
	p := ps.parse(data)
	sortProblems(ps.probs)
	for _, pr := range ps.probs {
		if !pr.Warning {
			return nil, Errors(ps.probs)
		}
	}
	p.Warnings = ps.probs
	p.File = file
	p.m = compile(p)
	p.procs = newProcCache(p)
	return p, nil
}

type parser struct {
	file  string
	probs []Problem
}

func (ps *parser) add(n *yaml.Node, warn bool, field, format string, args ...any) {
	pr := Problem{File: ps.file, Field: field, Msg: fmt.Sprintf(format, args...), Warning: warn}
	if n != nil {
		pr.Line, pr.Col = n.Line, n.Column
	}
	ps.probs = append(ps.probs, pr)
}

func (ps *parser) errf(n *yaml.Node, field, format string, args ...any) {
	ps.add(n, false, field, format, args...)
}

func (ps *parser) warnf(n *yaml.Node, field, format string, args ...any) {
	ps.add(n, true, field, format, args...)
}

// resolve follows aliases (the tree was bounded by countNodes first).
func (ps *parser) resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 100; i++ {
		n = n.Alias
	}
	return n
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return "null"
		case "!!int":
			return "an integer"
		case "!!bool":
			return "a boolean"
		case "!!float":
			return "a number"
		}
		return "a string"
	}
	return "an unsupported node"
}

type field struct {
	key, val *yaml.Node
}

// mapping returns the fields of a mapping node, reporting a wrong kind,
// duplicate keys, merge keys and fields not in known.
func (ps *parser) mapping(n *yaml.Node, path string, known ...string) ([]field, bool) {
	n = ps.resolve(n)
	if n.Kind != yaml.MappingNode {
		ps.errf(n, path, "expect a mapping, got %s", kindName(n))
		return nil, false
	}
	var out []field
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := ps.resolve(n.Content[i]), n.Content[i+1]
		fp := join(path, k.Value)
		switch {
		case k.Kind != yaml.ScalarNode:
			ps.errf(k, path, "expect field names, got %s", kindName(k))
			continue
		case k.Tag == "!!merge":
			ps.errf(k, path, "merge keys (<<) are not supported; repeat the fields or use an alias for a whole value")
			continue
		case seen[k.Value]:
			ps.errf(k, fp, "duplicate field")
			continue
		case !slices.Contains(known, k.Value):
			ps.errf(k, fp, "unknown field; expect one of %s", strings.Join(known, ", "))
			continue
		}
		seen[k.Value] = true
		out = append(out, field{k, ps.resolve(v)})
	}
	return out, true
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func (ps *parser) str(n *yaml.Node, path string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		ps.errf(n, path, "expect a string, got %s", kindName(n))
		return "", false
	}
	return n.Value, true
}

func (ps *parser) boolean(n *yaml.Node, path string) (bool, bool) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!bool" {
		if b, err := strconv.ParseBool(n.Value); err == nil {
			return b, true
		}
	}
	ps.errf(n, path, "expect true or false, got %s", kindName(n))
	return false, false
}

func (ps *parser) seq(n *yaml.Node, path string) ([]*yaml.Node, bool) {
	if n.Kind != yaml.SequenceNode {
		hint := ""
		if n.Kind == yaml.ScalarNode && n.Tag != "!!null" {
			hint = fmt.Sprintf("; write [%s]", n.Value)
		}
		ps.errf(n, path, "expect a list, got %s%s", kindName(n), hint)
		return nil, false
	}
	out := make([]*yaml.Node, len(n.Content))
	for i, c := range n.Content {
		out[i] = ps.resolve(c)
	}
	return out, true
}

func (ps *parser) strs(n *yaml.Node, path string) ([]string, []*yaml.Node) {
	items, ok := ps.seq(n, path)
	if !ok {
		return nil, nil
	}
	var out []string
	var nodes []*yaml.Node
	for i, it := range items {
		if s, ok := ps.str(it, fmt.Sprintf("%s[%d]", path, i)); ok {
			out = append(out, s)
			nodes = append(nodes, it)
		}
	}
	return out, nodes
}

func (ps *parser) duration(n *yaml.Node, path string) (time.Duration, bool) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!str" {
		d, err := time.ParseDuration(n.Value)
		if err == nil && d > 0 {
			return d, true
		}
		if err == nil {
			ps.errf(n, path, "%q must be positive", n.Value)
			return 0, false
		}
	}
	ps.errf(n, path, "expect a duration such as 30s, 5m or 1h, got %q", n.Value)
	return 0, false
}

func (ps *parser) parse(data []byte) *Policy {
	p := &Policy{Version: 1, IPv6: true, Env: map[string]string{}}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		line, msg := yamlErrLine(err)
		ps.probs = append(ps.probs, Problem{File: ps.file, Line: line, Col: 1, Msg: msg})
		return p
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		ps.probs = append(ps.probs, Problem{File: ps.file, Line: 1, Col: 1, Msg: "empty policy; expect at least version: 1 and rules:"})
		return p
	}
	if countNodes(&doc, 0) > maxNodes {
		ps.probs = append(ps.probs, Problem{File: ps.file, Line: 1, Col: 1, Msg: fmt.Sprintf("policy expands to more than %d YAML nodes (aliases included)", maxNodes)})
		return p
	}
	root := doc.Content[0]
	before := len(ps.probs)
	fields, ok := ps.mapping(root, "", "version", "mode", "ipv6", "rules", "limits")
	if !ok {
		return p
	}
	// A misspelt field already has its error: do not also report the
	// field it was meant to be as missing.
	clean := len(ps.probs) == before
	var haveVersion, haveRules bool
	var rulesNode *yaml.Node
	for _, f := range fields {
		switch f.key.Value {
		case "version":
			haveVersion = true
			if f.val.Kind != yaml.ScalarNode || f.val.Tag != "!!int" || f.val.Value != "1" {
				ps.errf(f.val, "version", "%q is not a supported version; expect 1", f.val.Value)
			}
		case "mode":
			if s, ok := ps.str(f.val, "mode"); ok {
				switch s {
				case "enforce":
					p.Mode = ModeEnforce
				case "audit":
					p.Mode = ModeAudit
				default:
					ps.errf(f.val, "mode", "%q is not one of enforce, audit", s)
				}
			}
		case "ipv6":
			if b, ok := ps.boolean(f.val, "ipv6"); ok {
				p.IPv6 = b
			}
		case "rules":
			haveRules = true
			rulesNode = f.val
		case "limits":
			p.Limits = ps.limits(f.val) // limits.go
		}
	}
	if !haveVersion && clean {
		ps.errf(root, "version", "required; expect version: 1")
	}
	if !haveRules {
		if clean {
			ps.errf(root, "rules", "required; write rules: [] for a policy that allows nothing")
		}
		return p
	}
	items, ok := ps.seq(rulesNode, "rules")
	if !ok {
		return p
	}
	srcs := make([]*ruleSrc, 0, len(items))
	for i, it := range items {
		r, src := ps.rule(i, it)
		if r != nil {
			p.Rules = append(p.Rules, r)
			srcs = append(srcs, src)
		}
	}
	ps.crossChecks(p, srcs)
	ps.precedenceTraps(p, srcs)
	return p
}

// countNodes counts the nodes of the tree with aliases expanded, stopping
// once past maxNodes.
func countNodes(n *yaml.Node, depth int) int {
	if n == nil || depth > 10000 {
		return 0
	}
	if n.Kind == yaml.AliasNode {
		return 1 + countNodes(n.Alias, depth+1)
	}
	c := 1
	for _, k := range n.Content {
		c += countNodes(k, depth+1)
		if c > maxNodes {
			return c
		}
	}
	return c
}

// yamlErrLine extracts "line N" from a yaml.v3 syntax error.
func yamlErrLine(err error) (int, string) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	rest, ok := strings.CutPrefix(msg, "line ")
	if !ok {
		return 1, "invalid YAML: " + msg
	}
	num, tail, _ := strings.Cut(rest, ":")
	n, err2 := strconv.Atoi(num)
	if err2 != nil {
		return 1, "invalid YAML: " + msg
	}
	return n, "invalid YAML:" + tail
}

// ruleSrc keeps the nodes of a rule for checks across rules.
type ruleSrc struct {
	node      *yaml.Node
	path      string
	nameNode  *yaml.Node
	hostNodes []*yaml.Node
	cidrNodes []*yaml.Node
	remapNode *yaml.Node
	envNodes  map[string]*yaml.Node
}

var ruleFields = append([]string{"name", "hosts", "paths", "methods", "ports", "cidrs", "action", "direct", "headers", "remap", "callback", "env", "oauth2", "aws_sigv4", "request", "processes", "listen"}, gateFields...)

func (ps *parser) rule(i int, n *yaml.Node) (*Rule, *ruleSrc) {
	path := fmt.Sprintf("rules[%d]", i)
	before := len(ps.probs)
	fields, ok := ps.mapping(n, path, ruleFields...)
	if !ok {
		return nil, nil
	}
	clean := len(ps.probs) == before // no misspelt field
	r := &Rule{Index: i}
	src := &ruleSrc{node: n, path: path}
	var (
		haveName     bool
		headersNode  *yaml.Node
		callbackNode *yaml.Node
		directNode   *yaml.Node
		pathsNode    *yaml.Node
		methodsNode  *yaml.Node
		portsNode    *yaml.Node
		envNode      *yaml.Node
		oauthNode    *yaml.Node
		sigNode      *yaml.Node
		requestNode  *yaml.Node
		procsNode    *yaml.Node
	)
	for _, f := range fields {
		fp := join(path, f.key.Value)
		switch f.key.Value {
		case "name":
			haveName = true
			src.nameNode = f.val
			if s, ok := ps.str(f.val, fp); ok {
				if !validRuleName(s) {
					ps.errf(f.val, fp, "%q is not a valid rule name; use 1-64 characters from a-z A-Z 0-9 . _ - starting with a letter or digit", s)
				}
				r.Name = s
			}
		case "hosts":
			vals, nodes := ps.strs(f.val, fp)
			for j, s := range vals {
				suffix, kind, msg := parseHostPattern(s)
				if msg != "" {
					ps.errf(nodes[j], fmt.Sprintf("%s[%d]", fp, j), "%s", msg)
					continue
				}
				r.Hosts = append(r.Hosts, patternString(suffix, kind))
				src.hostNodes = append(src.hostNodes, nodes[j])
			}
		case "paths":
			pathsNode = f.val
			vals, nodes := ps.strs(f.val, fp)
			for j, s := range vals {
				if _, msg := compileGlob(s); msg != "" {
					ps.errf(nodes[j], fmt.Sprintf("%s[%d]", fp, j), "%s", msg)
					continue
				}
				r.Paths = append(r.Paths, s)
			}
		case "methods":
			methodsNode = f.val
			vals, nodes := ps.strs(f.val, fp)
			for j, s := range vals {
				m := strings.ToUpper(s)
				if !validToken(m) {
					ps.errf(nodes[j], fmt.Sprintf("%s[%d]", fp, j), "%q is not an HTTP method; expect for example GET, POST, PUT, DELETE", s)
					continue
				}
				if !slices.Contains(r.Methods, m) {
					r.Methods = append(r.Methods, m)
				}
			}
		case "ports":
			portsNode = f.val
			r.Ports = ps.ports(f.val, fp)
		case "cidrs":
			vals, nodes := ps.strs(f.val, fp)
			for j, s := range vals {
				pfx, msg := parseCIDR(s)
				if msg != "" {
					ps.errf(nodes[j], fmt.Sprintf("%s[%d]", fp, j), "%s", msg)
					continue
				}
				r.CIDRs = append(r.CIDRs, pfx)
				src.cidrNodes = append(src.cidrNodes, nodes[j])
			}
		case "action":
			if s, ok := ps.str(f.val, fp); ok {
				switch s {
				case "allow":
					r.Action = ActionAllow
				case "deny":
					r.Action = ActionDeny
				default:
					ps.errf(f.val, fp, "%q is not one of allow, deny", s)
				}
			}
		case "direct":
			directNode = f.val
			if b, ok := ps.boolean(f.val, fp); ok {
				r.Direct = b
			}
		case "headers":
			headersNode = f.val
			items, ok := ps.seq(f.val, fp)
			if !ok {
				continue
			}
			seen := map[string]bool{}
			for j, it := range items {
				h, ok := ps.header(fmt.Sprintf("%s[%d]", fp, j), it)
				if !ok {
					continue
				}
				if seen[h.Name] {
					ps.errf(it, fmt.Sprintf("%s[%d].name", fp, j), "header %s is injected twice by this rule", h.Name)
					continue
				}
				seen[h.Name] = true
				r.Headers = append(r.Headers, h)
			}
		case "remap":
			src.remapNode = f.val
			if s, ok := ps.str(f.val, fp); ok {
				rm, msg := parseRemap(s)
				if msg != "" {
					ps.errf(f.val, fp, "%s", msg)
				} else {
					r.Remap = rm
				}
			}
		case "callback":
			callbackNode = f.val
			r.Callback = ps.callback(fp, f.val)
		case "env":
			envNode = f.val
			r.Env, src.envNodes = ps.env(fp, f.val)
		case "insecure_http", "case_insensitive_paths":
			ps.gateField(r, f, fp)
		case "oauth2":
			oauthNode, r.OAuth2 = f.val, ps.oauth2(fp, f.val)
		case "aws_sigv4":
			sigNode, r.AWSSigV4 = f.val, ps.awsSigV4(fp, f.val)
		case "request":
			requestNode = f.val
			r.Request = ps.request(fp, f.val)
		case "processes":
			procsNode = f.val
			r.Processes = ps.processes(fp, f.val)
		case "listen":
			r.Listen = ps.listen(fp, f.val)
		}
	}
	ps.credentialChecks(r, path, oauthNode, sigNode, headersNode)
	ps.checkShaping(r, path, requestNode, procsNode)
	if !haveName && clean {
		ps.errf(n, join(path, "name"), "required; every rule needs a unique name")
	}
	if hasField(fields, "listen") {
		ps.listenOnly(path, fields)
		return r, src
	}
	if clean && !hasField(fields, "hosts") && !hasField(fields, "cidrs") {
		ps.errf(n, path, "needs hosts or cidrs")
	}
	// Combinations.
	deny := r.Action == ActionDeny
	if deny {
		for _, c := range []struct {
			n    *yaml.Node
			name string
		}{{headersNode, "headers"}, {callbackNode, "callback"}, {src.remapNode, "remap"}, {envNode, "env"}} {
			if c.n != nil {
				ps.errf(c.n, join(path, c.name), "a deny rule cannot have %s", c.name)
			}
		}
		if r.Direct {
			ps.errf(directNode, join(path, "direct"), "a deny rule cannot be direct; drop direct: true")
		}
	}
	if r.Direct && !deny {
		if headersNode != nil {
			ps.errf(headersNode, join(path, "headers"), "a direct rule bypasses the proxy, so it cannot inject headers; drop direct: true or the headers")
		}
		if callbackNode != nil {
			ps.errf(callbackNode, join(path, "callback"), "a direct rule bypasses the proxy, so it cannot use a callback; drop direct: true or the callback")
		}
		if pathsNode != nil {
			ps.errf(pathsNode, join(path, "paths"), "a direct rule bypasses the proxy, so it cannot check paths; drop direct: true or the paths")
		}
		if methodsNode != nil {
			ps.errf(methodsNode, join(path, "methods"), "a direct rule bypasses the proxy, so it cannot check methods; drop direct: true or the methods")
		}
		if portsNode != nil && len(r.Hosts) > 0 {
			ps.errf(portsNode, join(path, "ports"), "a direct rule with hosts cannot restrict ports (the addresses its names resolve to are allowed on every port); use cidrs for a port-restricted direct rule")
		}
	}
	if r.Remap != nil && !hasField(fields, "hosts") {
		ps.errf(src.remapNode, join(path, "remap"), "remap works through DNS and needs hosts")
	}
	ps.gateChecks(r, path, fields)
	return r, src
}

func hasField(fs []field, name string) bool {
	for _, f := range fs {
		if f.key.Value == name {
			return true
		}
	}
	return false
}

func validRuleName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

func parseCIDR(s string) (netip.Prefix, string) {
	var pfx netip.Prefix
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return pfx, fmt.Sprintf("%q is not a CIDR; expect for example 10.0.5.0/24 or fd00::/64", s)
		}
		if p.Addr().Zone() != "" {
			return pfx, fmt.Sprintf("%q has a zone; drop it", s)
		}
		if p.Addr().Is4In6() {
			return pfx, fmt.Sprintf("%q is IPv4-mapped; write the IPv4 form", s)
		}
		if p.Masked() != p {
			return pfx, fmt.Sprintf("%q has bits set past the prefix length; use %s", s, p.Masked())
		}
		pfx = p
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return pfx, fmt.Sprintf("%q is not a CIDR or address; expect for example 10.0.5.0/24, 10.0.5.7 or fd00::/64", s)
		}
		if a.Zone() != "" {
			return pfx, fmt.Sprintf("%q has a zone; drop it", s)
		}
		if a.Is4In6() {
			return pfx, fmt.Sprintf("%q is IPv4-mapped; write the IPv4 form", s)
		}
		pfx = netip.PrefixFrom(a, a.BitLen())
	}
	if pfx.Bits() == 0 {
		return pfx, fmt.Sprintf("%q allows every address; sluice is default deny, list the ranges you need", s)
	}
	return pfx, ""
}

func parseRemap(s string) (*Remap, string) {
	host, port := s, ""
	if h, p, ok := strings.Cut(s, ":"); ok {
		host, port = h, p
	}
	if strings.Contains(host, "*") {
		return nil, fmt.Sprintf("%q: a remap target cannot be a wildcard", s)
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil, fmt.Sprintf("%q: a remap target is a host name (it is resolved by the sandbox's resolver), not an address", s)
	}
	n, ok := NormalizeName(host)
	if !ok {
		return nil, fmt.Sprintf("%q is not \"host\" or \"host:port\" with a valid host name", s)
	}
	rm := &Remap{Host: n}
	if port != "" {
		v, err := strconv.ParseUint(port, 10, 16)
		if err != nil || v == 0 {
			return nil, fmt.Sprintf("%q: port %q is not an integer from 1 to 65535", s, port)
		}
		rm.Port = uint16(v)
	}
	return rm, ""
}

func (ps *parser) header(path string, n *yaml.Node) (Header, bool) {
	fields, ok := ps.mapping(n, path, "name", "type", "value")
	if !ok {
		return Header{}, false
	}
	var h Header
	var nameNode, valueNode *yaml.Node
	good, haveType := true, false
	for _, f := range fields {
		fp := join(path, f.key.Value)
		switch f.key.Value {
		case "name":
			nameNode = f.val
			s, ok := ps.str(f.val, fp)
			switch {
			case !ok:
				good = false
			case !validToken(s):
				ps.errf(f.val, fp, "%q is not a valid header name", s)
				good = false
			case reservedHeaders[textproto.CanonicalMIMEHeaderKey(s)]:
				ps.errf(f.val, fp, "%s is managed by the proxy and cannot be injected", textproto.CanonicalMIMEHeaderKey(s))
				good = false
			default:
				h.Name = textproto.CanonicalMIMEHeaderKey(s)
			}
		case "type":
			haveType = true
			s, ok := ps.str(f.val, fp)
			if !ok {
				good = false
				continue
			}
			if h.Type, ok = parseHeaderType(s); !ok {
				ps.errf(f.val, fp, "%q is not one of %s", s, headerTypeWords())
				good = false
			}
		case "value":
			valueNode = f.val
			s, ok := ps.str(f.val, fp)
			if !ok {
				good = false
				continue
			}
			h.Value = s
		}
	}
	if nameNode == nil {
		ps.errf(n, join(path, "name"), "required")
		good = false
	}
	if !haveType {
		ps.errf(n, join(path, "type"), "required; expect secret, plaintext or opaque")
		good = false
	}
	if valueNode == nil {
		ps.errf(n, join(path, "value"), "required")
		return h, false
	}
	if !good {
		return h, false
	}
	vp := join(path, "value")
	if strings.ContainsAny(h.Value, "\r\n\x00") {
		ps.errf(valueNode, vp, "contains CR, LF or NUL, which cannot go in a header")
		return h, false
	}
	switch h.Type {
	case HeaderSecret:
		names, msg := placeholders(h.Value)
		switch {
		case msg != "":
			ps.errf(valueNode, vp, "%s", msg)
			return h, false
		case len(names) == 0:
			ps.errf(valueNode, vp, "a secret header needs a {NAME} placeholder naming its secret source, for example \"Bearer {API_TOKEN}\"; use type: plaintext for a fixed value")
			return h, false
		}
		h.Secrets = names
	case HeaderPlaintext, HeaderOpaque:
		if names, msg := placeholders(h.Value); msg == "" && len(names) > 0 {
			ps.errf(valueNode, vp, "placeholder {%s} has no secret source in a %s header and would be sent literally; use type: secret", names[0], h.Type)
			return h, false
		}
		if h.Value == "" {
			ps.errf(valueNode, vp, "empty %s value", h.Type)
			return h, false
		}
		if h.Type == HeaderPlaintext && credentialHeaders[h.Name] {
			ps.warnf(valueNode, vp, "plaintext %s value is readable by anyone who can read the policy; use type: secret with a {NAME} placeholder", h.Name)
		}
	}
	return h, true
}

func (ps *parser) callback(path string, n *yaml.Node) *Callback {
	fields, ok := ps.mapping(n, path, "url", "ttl", "timeout")
	if !ok {
		return nil
	}
	cb := &Callback{TTL: DefaultCallbackTTL, Timeout: DefaultCallbackTimeout}
	good, haveURL := true, false
	for _, f := range fields {
		fp := join(path, f.key.Value)
		switch f.key.Value {
		case "url":
			haveURL = true
			s, ok := ps.str(f.val, fp)
			if !ok {
				good = false
				continue
			}
			u, err := url.Parse(s)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				ps.errf(f.val, fp, "%q is not an http:// or https:// URL", s)
				good = false
				continue
			}
			if u.User != nil {
				ps.errf(f.val, fp, "the URL carries credentials; callbacks are authenticated by sluice's signature, drop the user information")
				good = false
				continue
			}
			cb.URL = s
		case "ttl":
			if d, ok := ps.duration(f.val, fp); ok {
				cb.TTL = d
			} else {
				good = false
			}
		case "timeout":
			if d, ok := ps.duration(f.val, fp); ok {
				cb.Timeout = d
			} else {
				good = false
			}
		}
	}
	if !haveURL {
		ps.errf(n, join(path, "url"), "required")
		good = false
	}
	if !good {
		return nil
	}
	return cb
}

func (ps *parser) env(path string, n *yaml.Node) (map[string]string, map[string]*yaml.Node) {
	n = ps.resolve(n)
	if n.Kind != yaml.MappingNode {
		ps.errf(n, path, "expect a mapping of variable names to values, got %s", kindName(n))
		return nil, nil
	}
	out := map[string]string{}
	nodes := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := ps.resolve(n.Content[i]), ps.resolve(n.Content[i+1])
		kp := join(path, k.Value)
		if k.Kind != yaml.ScalarNode || !validEnvName(k.Value) {
			ps.errf(k, kp, "%q is not a variable name; use A-Z a-z 0-9 _ not starting with a digit", k.Value)
			continue
		}
		if _, dup := out[k.Value]; dup {
			ps.errf(k, kp, "duplicate variable")
			continue
		}
		s, ok := ps.str(v, kp)
		if !ok {
			continue
		}
		if strings.ContainsRune(s, 0) {
			ps.errf(v, kp, "contains NUL")
			continue
		}
		out[k.Value] = s
		nodes[k.Value] = v
	}
	return out, nodes
}

func validEnvName(s string) bool {
	if s == "" || s[0] >= '0' && s[0] <= '9' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// crossChecks finds problems between rules: duplicate names, conflicting
// rules, remap/direct disagreements and conflicting env values.
func (ps *parser) crossChecks(p *Policy, srcs []*ruleSrc) {
	names := map[string]int{}
	type seenMatch struct {
		rule int
		deny bool
	}
	matches := map[string]seenMatch{}
	type dnsView struct {
		rule   int
		remap  string
		direct bool
	}
	views := map[string]dnsView{}
	envFrom := map[string]int{}
	for i, r := range p.Rules {
		src := srcs[i]
		if r.Name != "" {
			if j, dup := names[r.Name]; dup {
				ps.errf(src.nameNode, join(src.path, "name"), "%q is already the name of rules[%d]; names must be unique", r.Name, p.Rules[j].Index)
			} else {
				names[r.Name] = i
			}
		}
		shape := matchShape(r)
		check := func(kind, pattern string, n *yaml.Node, field string) {
			key := kind + "\x00" + pattern + "\x00" + shape
			prev, dup := matches[key]
			if !dup {
				matches[key] = seenMatch{i, r.Action == ActionDeny}
				return
			}
			o := p.Rules[prev.rule]
			switch {
			case prev.rule == i:
				ps.errf(n, field, "%q is listed twice", pattern)
			case prev.deny != (r.Action == ActionDeny):
				ps.errf(n, field, "conflicts with rules[%d] (%s): both match %q with the same paths, methods and ports, one allows and one denies (deny would always win); remove one or narrow it", o.Index, o.Name, pattern)
			default:
				ps.errf(n, field, "duplicates rules[%d] (%s): both %s %q with the same paths, methods and ports, so only one could apply; merge them", o.Index, o.Name, r.Action, pattern)
			}
		}
		for j, h := range r.Hosts {
			check("host", h, src.hostNodes[j], fmt.Sprintf("%s.hosts[%d]", src.path, j))
			if r.Action != ActionAllow {
				continue
			}
			rm := ""
			if r.Remap != nil {
				rm = r.Remap.Host + ":" + strconv.Itoa(int(r.Remap.Port))
			}
			v, seen := views[h]
			if !seen {
				views[h] = dnsView{i, rm, r.Direct}
				continue
			}
			if v.rule == i {
				continue
			}
			o := p.Rules[v.rule]
			if v.remap != rm {
				n := src.remapNode
				if n == nil {
					n = src.hostNodes[j]
				}
				ps.errf(n, fmt.Sprintf("%s.hosts[%d]", src.path, j), "rules[%d] (%s) also allows %q with a different remap; DNS answers one way per name, so give both rules the same remap", o.Index, o.Name, h)
			}
			if v.direct != r.Direct {
				ps.errf(src.hostNodes[j], fmt.Sprintf("%s.hosts[%d]", src.path, j), "rules[%d] (%s) also allows %q, one direct and one through the proxy; a name is either direct or proxied", o.Index, o.Name, h)
			}
		}
		for j, c := range r.CIDRs {
			check("cidr", c.String(), src.cidrNodes[j], fmt.Sprintf("%s.cidrs[%d]", src.path, j))
		}
		for _, k := range sortedKeys(r.Env) {
			v := r.Env[k]
			if j, dup := envFrom[k]; dup && p.Env[k] != v {
				ps.errf(src.envNodes[k], join(join(src.path, "env"), k), "rules[%d] (%s) sets %s to a different value; the sandbox has one environment", p.Rules[j].Index, p.Rules[j].Name, k)
				continue
			}
			envFrom[k] = i
			p.Env[k] = v
		}
	}
}

// matchShape is the canonical text of what a rule matches besides its
// hosts/cidrs: two rules with the same pattern and shape always match the
// same traffic.
func matchShape(r *Rule) string {
	paths := slices.Clone(r.Paths)
	slices.Sort(paths)
	methods := slices.Clone(r.Methods)
	slices.Sort(methods)
	ports := slices.Clone(r.Ports)
	slices.Sort(ports)
	var b strings.Builder
	b.WriteString(strings.Join(paths, "\x01"))
	b.WriteByte(0)
	b.WriteString(strings.Join(methods, "\x01"))
	b.WriteByte(0)
	for _, p := range ports {
		b.WriteString(strconv.Itoa(int(p)))
		b.WriteByte(1)
	}
	b.WriteByte(0)
	procs := slices.Clone(r.Processes)
	slices.Sort(procs)
	b.WriteString(strings.Join(procs, "\x01"))
	return b.String()
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// ports parses a list of ports (1–65535, duplicates dropped) at path.
func (ps *parser) ports(n *yaml.Node, path string) []uint16 {
	items, ok := ps.seq(n, path)
	if !ok {
		return nil
	}
	var out []uint16
	for j, it := range items {
		v, err := strconv.ParseUint(it.Value, 10, 16)
		if it.Kind != yaml.ScalarNode || it.Tag != "!!int" || err != nil || v == 0 {
			ps.errf(it, fmt.Sprintf("%s[%d]", path, j), "%q is not a port; expect an integer from 1 to 65535", it.Value)
			continue
		}
		if !slices.Contains(out, uint16(v)) {
			out = append(out, uint16(v))
		}
	}
	return out
}
