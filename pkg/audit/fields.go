package audit

// Field names of the JSON event schema (SCHEMA.md, version SchemaVersion).
// They are the only spelling of these names: the struct tags of Event use
// the same strings, and a test keeps the two in step.
const (
	FieldVersion   = "v"
	FieldTime      = "ts"
	FieldKind      = "kind"
	FieldSandbox   = "sandbox"
	FieldCgroupID  = "cgroup_id"
	FieldPID       = "pid"
	FieldComm      = "comm"
	FieldLabels    = "labels"
	FieldDecision  = "decision"
	FieldRule      = "rule"
	FieldReason    = "reason"
	FieldQName     = "qname"
	FieldQType     = "qtype"
	FieldRcode     = "rcode"
	FieldAnswers   = "answers"
	FieldDst       = "dst"
	FieldProto     = "proto"
	FieldSNI       = "sni"
	FieldHost      = "host"
	FieldBytesUp   = "bytes_up"
	FieldBytesDown = "bytes_down"
	FieldDuration  = "duration_ms"
	FieldMethod    = "method"
	FieldPath      = "path"
	FieldStatus    = "status"
	FieldInjected  = "injected"
	FieldLatency   = "latency_ms"
	FieldEcosystem = "ecosystem"
	FieldPackage   = "package"
	FieldVersionOf = "version" // package version (FieldVersion is the schema version)
	FieldDropped   = "dropped"
	FieldSinkErrs  = "sink_errors"
	FieldSink      = "sink"
)

// Package ecosystems named by ClassifyPackage and the Ecosystem field.
const (
	EcosystemNPM    = "npm"
	EcosystemPyPI   = "pypi"
	EcosystemGo     = "go"
	EcosystemCrates = "crates"
	EcosystemMaven  = "maven"
)
