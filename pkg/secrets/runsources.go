package secrets

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
)

// ParseSecretsFile reads NAME=value lines for `sluice run --secrets-file`.
// The file must be a regular file of mode 0600 or stricter (no group or
// other bits); otherwise the error says so and how to fix it. Blank lines and
// lines starting with # are skipped, and an optional "export " prefix is
// accepted. The value is everything after the first "=", verbatim (no quote
// processing) except a trailing "\r". Errors cite the line number, never the
// line's content.
func ParseSecretsFile(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("secrets file: %w", err)
	}
	defer f.Close()
	if err := checkPrivate(f, path); err != nil {
		return nil, fmt.Errorf("secrets file refused: %w", err)
	}
	data, err := io.ReadAll(io.LimitReader(f, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("secrets file %s: %w", path, err)
	}
	out := map[string]string{}
	lineOf := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 16<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSuffix(sc.Text(), "\r")
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		line = strings.TrimLeft(line, " \t")
		line = strings.TrimPrefix(line, "export ")
		name, value, ok := strings.Cut(line, "=")
		name = strings.TrimSpace(name)
		if !ok || !ValidName(name) {
			return nil, fmt.Errorf("%s:%d: expected NAME=value with NAME from A-Z a-z 0-9 _ . - (line content not shown)", path, n)
		}
		if first, dup := lineOf[name]; dup {
			return nil, fmt.Errorf("%s:%d: the name of line %d is set again", path, n, first)
		}
		if value == "" {
			return nil, fmt.Errorf("%s:%d: empty value", path, n)
		}
		out[name], lineOf[name] = value, n
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("secrets file %s: %w", path, err)
	}
	return out, nil
}

// FromEnv reads the variables names from lookupEnv (os.LookupEnv for
// `sluice run --secret-env NAME`). An unset or empty variable is an error.
func FromEnv(names []string, lookupEnv func(string) (string, bool)) (map[string]string, error) {
	out := make(map[string]string, len(names))
	for _, n := range names {
		if !ValidName(n) {
			return nil, fmt.Errorf("--secret-env %q: invalid secret name", n)
		}
		v, ok := lookupEnv(n)
		if !ok || v == "" {
			return nil, fmt.Errorf("--secret-env %s: environment variable %s is unset or empty", n, n)
		}
		out[n] = v
	}
	return out, nil
}
