package daemon

import (
	"context"
	"time"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/policy"
	"github.com/sluice-dev/sluice/pkg/proxy"
)

// auditedCallbacks emits one "callback" event per credential callback the
// proxy asks for (cache hits included: latency then shows the cache),
// with the outcome but never the headers.
type auditedCallbacks struct {
	next  proxy.Callbacks
	audit audit.Emitter
}

var _ proxy.Callbacks = auditedCallbacks{}

func (a auditedCallbacks) CallbackHeaders(ctx context.Context, sandbox, host string, port uint16, cb *policy.Callback) (map[string]string, error) {
	start := time.Now()
	h, err := a.next.CallbackHeaders(ctx, sandbox, host, port, cb)
	ev := audit.Event{Kind: audit.KindCallback, Sandbox: sandbox, Host: host, Decision: audit.DecisionAllow,
		LatencyMS: float64(time.Since(start).Microseconds()) / 1000}
	if err != nil {
		ev.Decision = audit.DecisionError
		ev.Reason = err.Error() // category only: callback errors carry no response content
	}
	for name := range h {
		ev.Injected = append(ev.Injected, name)
	}
	a.audit.Emit(ev)
	return h, err
}
