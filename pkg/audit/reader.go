package audit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"time"
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

// Follow calls fn for every event in the JSON-lines file at path and then
// for each event appended later, until ctx is done (returning nil) or fn
// fails. It polls every poll (default 250ms). When the file is rotated
// (replaced by a new file at path) it finishes the old file and continues
// at the start of the new one; when it is truncated it starts over. A
// path that does not exist yet is waited for. A malformed complete line
// is an error.
func Follow(ctx context.Context, path string, poll time.Duration, fn func(Event) error) error {
	if poll <= 0 {
		poll = 250 * time.Millisecond
	}
	var (
		f       *os.File
		offset  int64
		partial []byte
		buf     = make([]byte, 64<<10)
	)
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	// emitLines hands every complete line of partial to fn.
	emitLines := func() error {
		for {
			i := bytes.IndexByte(partial, '\n')
			if i < 0 {
				return nil
			}
			line := bytes.TrimSpace(partial[:i])
			partial = partial[i+1:]
			if len(line) == 0 {
				continue
			}
			var ev Event
			if err := json.Unmarshal(line, &ev); err != nil {
				return fmt.Errorf("reading audit log %s: %w", path, err)
			}
			if err := fn(ev); err != nil {
				return err
			}
		}
	}
	// drain reads f to its current end.
	drain := func() error {
		for {
			n, err := f.Read(buf)
			offset += int64(n)
			partial = append(partial, buf[:n]...)
			if perr := emitLines(); perr != nil {
				return perr
			}
			if errors.Is(err, io.EOF) || (err == nil && n == 0) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("reading audit log: %w", err)
			}
		}
	}
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for {
		if f == nil {
			nf, err := os.Open(path)
			switch {
			case err == nil:
				f, offset, partial = nf, 0, partial[:0]
			case !errors.Is(err, fs.ErrNotExist):
				return fmt.Errorf("reading audit log: %w", err)
			}
		}
		if f != nil {
			if err := drain(); err != nil {
				return err
			}
			st, err := os.Stat(path)
			fst, ferr := f.Stat()
			switch {
			case err != nil || ferr != nil || !os.SameFile(st, fst):
				// Rotated away (or removed): finish the old file, then
				// reopen path on the next round.
				if err := drain(); err != nil {
					return err
				}
				// Several rotations between two polls: the files newer
				// than ours are path.(k-1) .. path.1; read them whole.
				if ferr == nil {
					for _, p := range newerRotated(path, fst) {
						if err := readWhole(p, fn); err != nil {
							return err
						}
					}
				}
				f.Close()
				f = nil
				continue
			case st.Size() < offset:
				// Truncated in place: start over.
				if _, err := f.Seek(0, io.SeekStart); err != nil {
					return fmt.Errorf("reading audit log: %w", err)
				}
				offset, partial = 0, partial[:0]
				continue
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// newerRotated returns the rotated files of path newer than the file
// old, oldest first: path.(k-1) .. path.1 where path.k is old now.
func newerRotated(path string, old os.FileInfo) []string {
	for k := 1; ; k++ {
		st, err := os.Stat(path + "." + strconv.Itoa(k))
		if err != nil {
			return nil
		}
		if os.SameFile(st, old) {
			out := make([]string, 0, k-1)
			for i := k - 1; i >= 1; i-- {
				out = append(out, path+"."+strconv.Itoa(i))
			}
			return out
		}
	}
}

func readWhole(path string, fn func(Event) error) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // rotated away meanwhile
	}
	if err != nil {
		return fmt.Errorf("reading audit log: %w", err)
	}
	defer f.Close()
	if err := Decode(f, fn); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
