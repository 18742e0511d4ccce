package audit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
)

// WriterSink writes each event as one JSON line to an io.Writer (stdout, a
// pipe, a socket). Not safe for concurrent use: give it to one Logger.
type WriterSink struct {
	w    io.Writer
	name string
	buf  bytes.Buffer
	enc  *json.Encoder
}

// NewWriterSink returns a sink writing JSON lines to w; name identifies it
// in reports ("stdout").
func NewWriterSink(name string, w io.Writer) *WriterSink {
	s := &WriterSink{w: w, name: name}
	s.enc = newEncoder(&s.buf)
	return s
}

func newEncoder(w io.Writer) *json.Encoder {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc
}

// String names the sink.
func (s *WriterSink) String() string { return s.name }

// WriteEvent writes ev as one line.
func (s *WriterSink) WriteEvent(ev *Event) error {
	s.buf.Reset()
	if err := s.enc.Encode(ev); err != nil {
		return fmt.Errorf("encoding audit event: %w", err)
	}
	if _, err := s.w.Write(s.buf.Bytes()); err != nil {
		return fmt.Errorf("writing audit event to %s: %w", s.name, err)
	}
	return nil
}

// MarshalLine returns ev as one JSON line, newline included.
func MarshalLine(ev *Event) ([]byte, error) {
	var b bytes.Buffer
	if err := newEncoder(&b).Encode(ev); err != nil {
		return nil, fmt.Errorf("encoding audit event: %w", err)
	}
	return b.Bytes(), nil
}
