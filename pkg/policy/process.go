package policy

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
)

// maxProcessViews bounds the per-executable views a policy caches; past
// it a view is compiled per call (correct, only slower).
const maxProcessViews = 256

// procCache holds the per-executable views of a policy whose rules name
// processes.
type procCache struct {
	mu sync.Mutex // guards views
	// views maps an executable path to its view.
	views map[string]*Policy
}

// procView is what a view knows about the process it was made for.
type procView struct {
	exe  string
	base *Policy // the whole policy
}

// HasProcesses reports whether any rule of p names processes.
func (p *Policy) HasProcesses() bool { return p != nil && p.procs != nil }

// ForProcess returns the view of p for connections opened by the process
// whose executable is exe (the path /proc/PID/exe names; "" when unknown):
// rules whose processes: do not match exe are left out, every other rule
// stays as it is. Without any processes: rule it returns p itself. The
// resolver never uses a view: DNS answers stay per sandbox. A nil p
// returns nil. Safe for concurrent use.
func (p *Policy) ForProcess(exe string) *Policy {
	if p == nil || p.procs == nil {
		return p
	}
	if p.proc != nil { // already a view
		p = p.proc.base
	}
	c := p.procs
	c.mu.Lock()
	v := c.views[exe]
	c.mu.Unlock()
	if v != nil {
		return v
	}
	v = p.view(exe)
	c.mu.Lock()
	if len(c.views) < maxProcessViews {
		c.views[exe] = v
	}
	c.mu.Unlock()
	return v
}

func (p *Policy) view(exe string) *Policy {
	keep := make([]*Rule, 0, len(p.Rules))
	for _, r := range p.Rules {
		if len(r.Processes) == 0 || ProcessMatches(r.Processes, exe) {
			keep = append(keep, r)
		}
	}
	v := &Policy{Version: p.Version, Mode: p.Mode, IPv6: p.IPv6, Rules: p.Rules, Env: p.Env,
		File: p.File, Warnings: p.Warnings, procs: p.procs, proc: &procView{exe: exe, base: p}}
	v.m = compile(&Policy{Rules: keep})
	return v
}

func newProcCache(p *Policy) *procCache {
	for _, r := range p.Rules {
		if len(r.Processes) > 0 {
			return &procCache{views: map[string]*Policy{}}
		}
	}
	return nil
}

// processConnReason explains a connection the view refuses but the whole
// policy would not: a rule allows it for other processes only. "" when the
// refusal has nothing to do with processes.
func (p *Policy) processConnReason(whole ConnMatch) string {
	if whole.Verdict == VerdictDeny || whole.Rule == nil {
		return ""
	}
	return processReason(whole.Rule, p.proc.exe)
}

func processReason(r *Rule, exe string) string {
	if exe == "" {
		exe = "an unknown executable"
	}
	return fmt.Sprintf("rule %s applies only to processes %s; this connection comes from process %s", r.Name, strings.Join(r.Processes, ", "), exe)
}

// procConn adds the process reason to a refusal of a view.
func (p *Policy) procConn(m ConnMatch, host string, addr netip.Addr, port uint16) ConnMatch {
	if p.proc == nil || m.Verdict != VerdictDeny || m.Rule != nil {
		return m
	}
	var whole ConnMatch
	if host != "" {
		whole = p.proc.base.MatchConn(host, port)
	} else {
		whole = p.proc.base.MatchAddr(addr, port)
	}
	m.Reason = p.processConnReason(whole)
	return m
}

// procRequest replaces the reason of a request a view refuses when the
// whole policy allows it (for other processes).
func (p *Policy) procRequest(reason, host string, port uint16, method, path string) string {
	if p.proc == nil {
		return reason
	}
	if whole := p.proc.base.MatchRequest(host, port, method, path); whole.Allowed && whole.Rule != nil {
		return processReason(whole.Rule, p.proc.exe)
	}
	return reason
}
