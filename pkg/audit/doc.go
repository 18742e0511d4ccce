// Package audit defines sluice's audit events and carries them to sinks.
//
// Components (resolver, proxy, enforcer reader, secrets callback) build one
// Event per DNS query, connection, HTTP request, kernel refusal and
// callback, and hand it to an Emitter. The daemon's Emitter is a Logger:
// it queues without blocking and fans out to sinks (FileSink with size
// rotation, WriterSink for stdout, Broadcast for the API stream, Summary for
// `sluice run`, MetricsSink for Prometheus). Metrics are derived from the
// events, so components only emit events.
//
// Invariants:
//   - Emit never blocks the caller. A full queue drops the event and counts
//     it (Logger.Dropped); a blocked or failing sink only loses its own
//     events and counts them; drops and sink errors are reported
//     periodically as a slog warning and a KindAudit event.
//   - No event field may hold a secret value, a query-string value or a
//     request body. Build paths with RedactPath and headers with
//     RedactHeaders; Event.Injected holds header names only.
//   - The JSON schema is documented in SCHEMA.md and versioned by
//     SchemaVersion; field names are the Field* constants.
//   - Logger, FileSink, Broadcast, Summary and Metrics are safe for
//     concurrent use. Logger.Close must be called to flush and stop its
//     goroutines.
package audit
