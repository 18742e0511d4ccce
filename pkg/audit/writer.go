package audit

import (
	"fmt"
	"io"
)

// WriterSink writes each event as one JSON line to an io.Writer (stdout, a
// pipe, a socket), a batch per Write. Used without a Logger, call Flush.
// Not safe for concurrent use: give it to one Logger.
type WriterSink struct {
	w    io.Writer
	name string
	buf  []byte // pending lines
}

// NewWriterSink returns a sink writing JSON lines to w; name identifies it
// in reports ("stdout").
func NewWriterSink(name string, w io.Writer) *WriterSink {
	return &WriterSink{w: w, name: name}
}

// String names the sink.
func (s *WriterSink) String() string { return s.name }

// WriteEvent adds ev as one line to the pending batch, which Flush writes
// (the Logger calls Flush whenever the sink's queue runs empty).
func (s *WriterSink) WriteEvent(ev *Event) error {
	b, err := appendLine(s.buf, ev)
	if err != nil {
		return fmt.Errorf("encoding audit event: %w", err)
	}
	s.buf = b
	return nil
}

// Flush writes the pending lines in one Write.
func (s *WriterSink) Flush() error {
	if len(s.buf) == 0 {
		return nil
	}
	defer func() { s.buf = s.buf[:0] }() // a failed batch is lost, and counted by the Logger
	if _, err := s.w.Write(s.buf); err != nil {
		return fmt.Errorf("writing audit events to %s: %w", s.name, err)
	}
	return nil
}

// MarshalLine returns ev as one JSON line, newline included.
func MarshalLine(ev *Event) ([]byte, error) {
	b, err := appendLine(make([]byte, 0, 512), ev)
	if err != nil {
		return nil, fmt.Errorf("encoding audit event: %w", err)
	}
	return b, nil
}
