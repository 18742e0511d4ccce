package daemon

import (
	"bytes"
	"fmt"

	"github.com/sluice-dev/sluice/pkg/policy"
	"github.com/sluice-dev/sluice/pkg/secrets"
	"gopkg.in/yaml.v3"
)

// opaqueMarker replaces an opaque header value in the policy text the daemon
// keeps in its state dir; the value itself is in the encrypted store.
const opaqueMarker = "<opaque>"

// splitOpaque returns the policy text with every opaque header value
// replaced by opaqueMarker, and the values by store reference. A policy
// without opaque headers comes back unchanged.
func splitOpaque(sandbox string, pol *policy.Policy, text []byte) ([]byte, map[secrets.OpaqueRef]string, error) {
	values := map[secrets.OpaqueRef]string{}
	for _, r := range pol.Rules {
		for _, h := range r.Headers {
			if h.Type == policy.HeaderOpaque {
				values[secrets.OpaqueRef{Sandbox: sandbox, Rule: r.Name, Header: h.Name}] = h.Value
			}
		}
	}
	if len(values) == 0 {
		return text, nil, nil
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(text, &doc); err != nil {
		return nil, nil, fmt.Errorf("re-reading policy: %w", err)
	}
	for _, rule := range seq(mapValue(root(&doc), "rules")) {
		for _, hdr := range seq(mapValue(rule, "headers")) {
			if t := mapValue(hdr, "type"); t != nil && t.Value == policy.HeaderOpaque.String() {
				if v := mapValue(hdr, "value"); v != nil {
					v.Value, v.Style, v.Tag = opaqueMarker, yaml.DoubleQuotedStyle, "!!str"
				}
			}
		}
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, nil, fmt.Errorf("writing policy: %w", err)
	}
	return buf.Bytes(), values, nil
}

// joinOpaque puts the stored opaque values back into a policy parsed from
// text written by splitOpaque.
func joinOpaque(sandbox string, pol *policy.Policy, store *secrets.Store) error {
	for _, r := range pol.Rules {
		for i := range r.Headers {
			h := &r.Headers[i]
			if h.Type != policy.HeaderOpaque || h.Value != opaqueMarker {
				continue
			}
			v, err := store.Opaque(secrets.OpaqueRef{Sandbox: sandbox, Rule: r.Name, Header: h.Name})
			if err != nil {
				return fmt.Errorf("opaque value of rule %q header %s: %w", r.Name, h.Name, err)
			}
			h.Value = v
		}
	}
	return nil
}

func root(n *yaml.Node) *yaml.Node {
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		return n.Content[0]
	}
	return n
}

func mapValue(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

func seq(n *yaml.Node) []*yaml.Node {
	if n == nil || n.Kind != yaml.SequenceNode {
		return nil
	}
	return n.Content
}
