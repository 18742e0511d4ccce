package audit

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"sync"
)

// FileSinkOptions configure a FileSink.
type FileSinkOptions struct {
	// MaxBytes rotates the file before a write would make it larger
	// (default 100 MiB).
	MaxBytes int64
	// Keep is the number of rotated files kept: path.1 (newest) ..
	// path.Keep (default 5). Older ones are removed.
	Keep int
	// Mode is the permission of new files (default 0o600: the log names
	// hosts and paths the sandbox used).
	Mode fs.FileMode
}

// FileSink appends JSON lines to a file and rotates it by size. Lines are
// batched and written by Flush: used without a Logger, call Flush or
// Close. Safe for concurrent use. A write error (disk full) is returned to
// the Logger, which counts and reports the lost events; the sink keeps
// trying on later batches.
type FileSink struct {
	path string
	opts FileSinkOptions

	mu      sync.Mutex
	f       *os.File
	size    int64
	line    []byte       // the line being encoded
	pending bytes.Buffer // lines not yet written
}

// NewFileSink opens (creating if needed) path for appending. The
// directory must exist.
func NewFileSink(path string, opts FileSinkOptions) (*FileSink, error) {
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 100 << 20
	}
	if opts.Keep <= 0 {
		opts.Keep = 5
	}
	if opts.Mode == 0 {
		opts.Mode = 0o600
	}
	s := &FileSink{path: path, opts: opts}
	if err := s.open(); err != nil {
		return nil, err
	}
	return s, nil
}

// String names the sink.
func (s *FileSink) String() string { return "file:" + s.path }

// Path returns the path of the current file.
func (s *FileSink) Path() string { return s.path }

func (s *FileSink) open() error {
	f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, s.opts.Mode)
	if err != nil {
		return fmt.Errorf("opening audit file: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("opening audit file: %w", err)
	}
	s.f, s.size = f, st.Size()
	return nil
}

// WriteEvent encodes ev as one line into the pending batch, writing the
// batch and rotating first if the line would take the file past MaxBytes.
// Lines reach the file on Flush (the Logger calls it whenever the sink's
// queue runs empty) or Close.
func (s *FileSink) WriteEvent(ev *Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	line, err := appendLine(s.line[:0], ev)
	if err != nil {
		return fmt.Errorf("encoding audit event: %w", err)
	}
	s.line = line
	if used := s.size + int64(s.pending.Len()); used > 0 && used+int64(len(line)) > s.opts.MaxBytes {
		if err := s.flushLocked(); err != nil {
			return err
		}
		if s.f != nil {
			if err := s.rotate(); err != nil {
				return err
			}
		}
	}
	s.pending.Write(line)
	return nil
}

// Flush writes the pending lines to the file in one write.
func (s *FileSink) Flush() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.flushLocked()
}

func (s *FileSink) flushLocked() error {
	if s.pending.Len() == 0 {
		return nil
	}
	defer s.pending.Reset() // a failed batch is lost, and counted by the Logger
	if s.f == nil {
		// A previous rotation could not reopen the file: try again.
		if err := s.open(); err != nil {
			return err
		}
	}
	n, err := s.f.Write(s.pending.Bytes())
	s.size += int64(n)
	if err != nil {
		return fmt.Errorf("writing audit file: %w", err)
	}
	return nil
}

// rotate shifts path.(i) to path.(i+1), path to path.1, removes what falls
// beyond Keep and opens a fresh path.
func (s *FileSink) rotate() error {
	if err := s.f.Close(); err != nil {
		s.f = nil
		return fmt.Errorf("rotating audit file: %w", err)
	}
	s.f = nil
	oldest := s.rotated(s.opts.Keep)
	if err := os.Remove(oldest); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("rotating audit file: %w", err)
	}
	for i := s.opts.Keep - 1; i >= 1; i-- {
		if err := os.Rename(s.rotated(i), s.rotated(i+1)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("rotating audit file: %w", err)
		}
	}
	if err := os.Rename(s.path, s.rotated(1)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("rotating audit file: %w", err)
	}
	return s.open()
}

func (s *FileSink) rotated(i int) string {
	return s.path + "." + strconv.Itoa(i)
}

// Sync writes the pending lines and flushes the file to stable storage.
func (s *FileSink) Sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.flushLocked(); err != nil {
		return err
	}
	if s.f == nil {
		return nil
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("syncing audit file: %w", err)
	}
	return nil
}

// Close writes the pending lines and closes the file.
func (s *FileSink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ferr := s.flushLocked()
	if s.f == nil {
		return ferr
	}
	err := errors.Join(ferr, s.f.Close())
	s.f = nil
	if err != nil {
		return fmt.Errorf("closing audit file: %w", err)
	}
	return nil
}

// RotatedFiles returns path followed by its rotated files that exist,
// newest first: path, path.1, path.2, ...
func RotatedFiles(path string) []string {
	out := []string{}
	if _, err := os.Stat(path); err == nil {
		out = append(out, path)
	}
	for i := 1; ; i++ {
		p := path + "." + strconv.Itoa(i)
		if _, err := os.Stat(p); err != nil {
			break
		}
		out = append(out, p)
	}
	return out
}
