package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
)

// Decode reads JSON-lines events from r and calls fn for each, in order.
// Blank lines are skipped. A malformed line is an error naming its line
// number, except a final line without a newline (a write torn by a crash
// or still in progress), which is ignored. An error from fn stops
// decoding and is returned as is.
func Decode(r io.Reader, fn func(Event) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	for line := 1; ; line++ {
		b, err := br.ReadBytes('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("reading audit log: line %d: %w", line, err)
		}
		complete := len(b) > 0 && b[len(b)-1] == '\n'
		if t := bytes.TrimSpace(b); len(t) > 0 {
			var ev Event
			if jerr := json.Unmarshal(t, &ev); jerr != nil {
				if !complete {
					return nil
				}
				return fmt.Errorf("reading audit log: line %d: %w", line, jerr)
			}
			if ferr := fn(ev); ferr != nil {
				return ferr
			}
		}
		if err != nil { // io.EOF
			return nil
		}
	}
}

// ReadFile returns every event in the JSON-lines file at path.
func ReadFile(path string) ([]Event, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading audit log: %w", err)
	}
	defer f.Close()
	var out []Event
	if err := Decode(f, func(ev Event) error { out = append(out, ev); return nil }); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}
