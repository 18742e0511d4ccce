package audit

import "time"

// SchemaVersion is the version of the event schema; bump it on any
// incompatible change to Event.
const SchemaVersion = 1

// Kinds of events.
const (
	KindDNS     = "dns"
	KindConn    = "conn"
	KindHTTP    = "http"
	KindKernel  = "kernel"
	KindSecret  = "secret" // e.g. an injected secret echoed back and redacted
	KindSandbox = "sandbox"
	// KindCallback records one call to a credential callback service
	// (Host, Rule, LatencyMS; Decision allow or error).
	KindCallback = "callback"
	// KindAudit is the audit pipeline reporting on itself: events dropped
	// under pressure and sink write errors. Its Decision is empty.
	KindAudit = "audit"
	// KindFence records work refused at one of a sandbox's resource fences
	// (Reason: connections, upstream_connections, request_head_bytes,
	// dns_qps; Decision deny).
	KindFence = "fence"
)

// Decisions.
const (
	DecisionAllow     = "allow"
	DecisionDeny      = "deny"
	DecisionWouldDeny = "would_deny"
	DecisionSplice    = "splice"
	DecisionIntercept = "intercept"
	DecisionError     = "error"
)

// Event is one structured audit record. Zero fields are omitted from JSON.
// No field may ever hold a secret value, a query-string value or a body.
type Event struct {
	V        int       `json:"v"`
	Time     time.Time `json:"ts"`
	Kind     string    `json:"kind"`
	Sandbox  string    `json:"sandbox,omitempty"`
	CgroupID uint64    `json:"cgroup_id,omitempty"`
	PID      uint32    `json:"pid,omitempty"`
	Comm     string    `json:"comm,omitempty"`
	// Exe is the executable of the process (its /proc/PID/exe when the
	// proxy accepted the connection).
	Exe      string `json:"exe,omitempty"`
	Decision string `json:"decision"`
	Rule     string `json:"rule,omitempty"`
	Reason   string `json:"reason,omitempty"`

	// DNS
	QName   string   `json:"qname,omitempty"`
	QType   string   `json:"qtype,omitempty"`
	Rcode   string   `json:"rcode,omitempty"`
	Answers []string `json:"answers,omitempty"`

	// Connection
	Dst        string `json:"dst,omitempty"` // original destination ip:port
	Proto      string `json:"proto,omitempty"`
	SNI        string `json:"sni,omitempty"`
	Host       string `json:"host,omitempty"`
	BytesUp    int64  `json:"bytes_up,omitempty"`
	BytesDown  int64  `json:"bytes_down,omitempty"`
	DurationMS int64  `json:"duration_ms,omitempty"`

	// HTTP
	Method   string   `json:"method,omitempty"`
	Path     string   `json:"path,omitempty"` // query values stripped
	Status   int      `json:"status,omitempty"`
	Injected []string `json:"injected,omitempty"` // header names only
	// Redacted counts the request-body matches replaced, per redact_body
	// pattern (the pattern's text); never the matched values.
	Redacted map[string]int `json:"redacted,omitempty"`
	// LatencyMS is the time to the upstream's response headers.
	LatencyMS float64 `json:"latency_ms,omitempty"`

	// Package fetch summary (npm, pypi, go, crates, maven).
	Ecosystem string `json:"ecosystem,omitempty"`
	Package   string `json:"package,omitempty"`
	Version   string `json:"version,omitempty"`

	// Audit pipeline self-reports (Kind == KindAudit).
	Dropped    uint64 `json:"dropped,omitempty"`     // events dropped since the previous report
	SinkErrors uint64 `json:"sink_errors,omitempty"` // sink write errors since the previous report
	Sink       string `json:"sink,omitempty"`        // the sink concerned, if any

	// Labels are the sandbox's labels (`--label k=v`, pod labels,
	// container annotations); the map is shared between events and must
	// not be modified.
	Labels map[string]string `json:"labels,omitempty"`
}

// Emitter receives audit events. Implementations must not block the caller
// for long: a slow sink drops and counts, it never stalls traffic.
type Emitter interface {
	Emit(Event)
}

// Discard is an Emitter that drops every event.
type Discard struct{}

// Emit drops ev.
func (Discard) Emit(Event) {}
