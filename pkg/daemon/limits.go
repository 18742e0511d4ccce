package daemon

import (
	"time"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/enforcer"
	"github.com/sluice-dev/sluice/pkg/fence"
	"github.com/sluice-dev/sluice/pkg/policy"
)

// newFence returns a sandbox's resource fences: limits from its current
// policy (defaults filled in), each refusal reported to emit as an audit event
// (kind fence, which the metrics sink counts in
// sluice_fence_refusals_total) and in the pinned refusal counters that
// `sluice blocked` reads.
func (rt *Runtime) newFence(s *Sandbox, emit audit.Emitter) *fence.Sandbox {
	return fence.New(func() policy.Limits { return s.Policy().Fences() }, func(r fence.Refusal) {
		proto, p := "tcp", uint16(enforcer.ProtoTCP)
		if r.UDP {
			proto, p = "udp", enforcer.ProtoUDP
		}
		ev := audit.Event{
			V: audit.SchemaVersion, Time: time.Now(), Kind: audit.KindFence, Sandbox: s.Name, CgroupID: s.ID,
			Decision: audit.DecisionDeny, Reason: r.Kind.String(), Proto: proto,
		}
		if r.Dst.IsValid() {
			ev.Dst = r.Dst.String()
		}
		emit.Emit(ev)
		if s.kernel != nil {
			if err := s.kernel.Count(fenceReason(r.Kind), r.Dst, p); err != nil {
				rt.Log.Debug("counting a fence refusal", "sandbox", s.Name, "err", err)
			}
		}
	})
}

func fenceReason(k fence.Kind) enforcer.Reason {
	switch k {
	case fence.UpstreamConnections:
		return enforcer.ReasonFenceUpstreamConnections
	case fence.RequestHeadBytes:
		return enforcer.ReasonFenceRequestHeadBytes
	case fence.DNSQPS:
		return enforcer.ReasonFenceDNSQPS
	}
	return enforcer.ReasonFenceConnections
}
