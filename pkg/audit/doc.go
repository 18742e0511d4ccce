// Package audit defines sluice's audit events and carries them to sinks.
//
// Components (resolver, proxy, enforcer reader, secrets callback) build one
// Event per DNS query, connection, HTTP request, kernel refusal and
// callback, and hand it to an Emitter. The daemon's Emitter is a Logger:
// it queues without blocking and fans out to sinks (FileSink with size
// rotation, WriterSink for standard error, both opened by OpenSink from the
// --audit flag or "audit" setting; Broadcast for the API stream, Summary for
// `sluice run`, MetricsSink for Prometheus). Metrics are derived from the
// events, so components only emit events. The JSON schema is SCHEMA.md.
//
// Helpers keep events clean: RedactPath (query values), RedactHeaders
// (header values not allow-listed), HeaderNames (for Event.Injected) and
// ClassifyPackage (ecosystem, package and version of a registry download,
// mirrors included). Decode, ReadFile and Follow read the JSON-lines file
// back; FormatTable and FormatPackages render it for `sluice logs`.
//
// Invariants:
//   - Emit never blocks the caller. A full queue drops the event and counts
//     it (Logger.Dropped); a blocked or failing sink only loses its own
//     events and counts them; drops and sink errors are reported every
//     ReportInterval as a slog warning and a KindAudit event, and exported
//     as Prometheus counters.
//   - Events reach the sinks in batches (at most BatchDelay late while
//     busy); sinks that buffer implement Flusher and are flushed whenever
//     their queue runs empty. Logger.Flush waits for everything emitted
//     before it.
//   - No event field may hold a secret value, a query-string value or a
//     request body. Build paths with RedactPath; Event.Injected holds
//     header names only.
//   - Field names are the json tags of Event, each documented in
//     SCHEMA.md (a test checks); the JSON encoding is byte-identical to
//     encoding/json's.
//   - Logger, FileSink, Broadcast, Summary, Metrics and MetricsSink are
//     safe for concurrent use; a WriterSink belongs to one Logger. Close
//     must be called on a Logger to flush and stop its goroutines; it
//     closes the sinks that are io.Closers.
package audit
