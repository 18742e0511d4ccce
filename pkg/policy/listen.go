package policy

import (
	"fmt"
	"net/netip"
	"slices"

	"gopkg.in/yaml.v3"
)

// Listen is a rule's listen block: peers in From may connect to the
// sandbox's TCP listeners on Ports. Without a listen rule, the kernel keeps
// a sandbox's listeners on loopback and an accepted connection from any
// peer but loopback sends nothing.
type Listen struct {
	Ports []uint16
	From  []netip.Prefix
}

// maxListenPorts is the kernel's limit of ports per listen range.
const maxListenPorts = 8

// ListenEntry is one range of peers and the ports they may connect to, for
// the kernel.
type ListenEntry struct {
	From  netip.Prefix
	Ports []uint16
}

// ListenEntries returns every listen rule's ranges, in rule order.
func (p *Policy) ListenEntries() []ListenEntry {
	if p == nil {
		return nil
	}
	var out []ListenEntry
	for _, r := range p.Rules {
		if r.Listen == nil {
			continue
		}
		for _, f := range r.Listen.From {
			out = append(out, ListenEntry{From: f, Ports: slices.Clone(r.Listen.Ports)})
		}
	}
	return out
}

// listen parses a rule's listen block: {ports: [...], from: [cidrs]}.
func (ps *parser) listen(path string, n *yaml.Node) *Listen {
	fields, ok := ps.mapping(n, path, "ports", "from")
	if !ok {
		return nil
	}
	before := len(ps.probs)
	l := &Listen{}
	for _, f := range fields {
		fp := join(path, f.key.Value)
		switch f.key.Value {
		case "ports":
			l.Ports = ps.ports(f.val, fp)
			if len(l.Ports) > maxListenPorts {
				ps.errf(f.val, fp, "at most %d ports per listen rule; split it into several rules", maxListenPorts)
			}
		case "from":
			vals, nodes := ps.strs(f.val, fp)
			for j, s := range vals {
				pfx, msg := parseCIDR(s)
				if msg != "" {
					ps.errf(nodes[j], fmt.Sprintf("%s[%d]", fp, j), "%s", msg)
					continue
				}
				l.From = append(l.From, pfx)
			}
		}
	}
	clean := len(ps.probs) == before
	if !hasField(fields, "ports") || (len(l.Ports) == 0 && clean) {
		ps.errf(n, join(path, "ports"), "required; list the ports the sandbox listens on, for example [8080]")
	}
	if !hasField(fields, "from") || (len(l.From) == 0 && clean) {
		ps.errf(n, join(path, "from"), "required; list the peers that may connect, for example [10.0.0.0/8]")
	}
	return l
}

// listenOnly reports the fields a listen rule cannot have: it admits
// inbound connections and allows nothing outbound.
func (ps *parser) listenOnly(path string, fields []field) {
	for _, f := range fields {
		switch f.key.Value {
		case "name", "listen":
		default:
			ps.errf(f.key, join(path, f.key.Value), "a listen rule has only name and listen; put %s in a rule of its own", f.key.Value)
		}
	}
}
