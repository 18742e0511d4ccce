package audit

import (
	"io"
	"os"
)

// SinkOptions configure the sink OpenSink opens.
type SinkOptions struct {
	// Stderr is where "-" writes (default os.Stderr).
	Stderr io.Writer
	// File configures a file sink.
	File FileSinkOptions
}

// OpenSink opens the audit sink that spec names, the one place that reads
// the --audit flag and the daemon's "audit" setting:
//
//	""      none: OpenSink returns a nil Sink
//	"-"     JSON lines to standard error (stdout stays the sandboxed
//	        command's under `sluice run`)
//	other   a file path: JSON lines, rotated by size (FileSink)
//
// A new kind of sink adds its case here and its type in its own file.
func OpenSink(spec string, o SinkOptions) (Sink, error) {
	switch spec {
	case "":
		return nil, nil
	case "-":
		w := o.Stderr
		if w == nil {
			w = os.Stderr
		}
		return NewWriterSink("stderr", w), nil
	default:
		return NewFileSink(spec, o.File)
	}
}
