package sandbox

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// secretFDEnv names the descriptor of the memfd that carries the
// --secret-env values across HideSecretEnv's re-exec.
const secretFDEnv = "SLUICE_SECRET_ENV_FD"

// HideSecretEnv makes sure sluice's own initial environment
// (/proc/PID/environ, which unsetenv does not change) holds none of the
// variables names: when one is set, the process re-executes itself with
// the same pid and arguments but without them, their values passing
// through an anonymous memfd; the re-executed process reads them back.
// It returns a lookup over the values (then the only copy) and never
// returns on a successful re-exec. Call it before starting goroutines
// that matter (it replaces the process image).
func HideSecretEnv(names []string) (func(string) (string, bool), error) {
	if fdStr, ok := os.LookupEnv(secretFDEnv); ok {
		os.Unsetenv(secretFDEnv)
		fd, err := strconv.Atoi(fdStr)
		if err != nil {
			return nil, fmt.Errorf("%s: not a descriptor", secretFDEnv)
		}
		f := os.NewFile(uintptr(fd), "secret-env")
		var vals map[string]string
		err = json.NewDecoder(f).Decode(&vals)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("reading the secret variables back: %w", err)
		}
		return lookupIn(vals), nil
	}
	vals := map[string]string{}
	for _, n := range names {
		if v, ok := os.LookupEnv(n); ok {
			vals[n] = v
		}
	}
	if len(vals) == 0 {
		return os.LookupEnv, nil
	}
	fd, err := unix.MemfdCreate("sluice-secret-env", 0) // inherited by the exec
	if err != nil {
		return nil, fmt.Errorf("memfd for the secret variables: %w", err)
	}
	data, _ := json.Marshal(vals)
	if _, err := unix.Write(fd, data); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("memfd for the secret variables: %w", err)
	}
	if _, err := unix.Seek(fd, 0, 0); err != nil {
		unix.Close(fd)
		return nil, err
	}
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if _, secret := vals[k]; secret || k == secretFDEnv {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, secretFDEnv+"="+strconv.Itoa(fd))
	err = syscall.Exec("/proc/self/exe", os.Args, env)
	unix.Close(fd)
	return nil, fmt.Errorf("re-executing sluice without the secret variables: %w", err)
}

func lookupIn(vals map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		if v, ok := vals[name]; ok {
			return v, true
		}
		return os.LookupEnv(name)
	}
}

// ScrubOwnEnviron removes from this process's environment, including what
// /proc/PID/environ shows, every variable named in names or whose value is
// one of values: they are unset, and their entries in the initial
// environment block (which the kernel shows and unsetenv leaves alone) are
// overwritten with NUL bytes through /proc/self/mem. For values sluice only
// learns after start (a secrets file, the store), where HideSecretEnv's
// re-exec cannot help. Call it once, early: Go's runtime no longer reads
// the block after start.
func ScrubOwnEnviron(names, values []string) error {
	dropName := map[string]bool{}
	for _, n := range names {
		dropName[n] = true
	}
	dropValue := map[string]bool{}
	for _, v := range values {
		if v != "" {
			dropValue[v] = true
		}
	}
	drop := func(kv string) bool {
		k, v, _ := strings.Cut(kv, "=")
		return dropName[k] || dropValue[v]
	}
	for _, kv := range os.Environ() {
		if drop(kv) {
			k, _, _ := strings.Cut(kv, "=")
			os.Unsetenv(k)
		}
	}
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return err
	}
	// Fields 50 and 51 of /proc/self/stat: env_start, env_end.
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	if len(fields) < 49 {
		return fmt.Errorf("/proc/self/stat has %d fields", len(fields)+2)
	}
	start, err1 := strconv.ParseInt(fields[47], 10, 64)
	end, err2 := strconv.ParseInt(fields[48], 10, 64)
	if err1 != nil || err2 != nil || end <= start {
		return fmt.Errorf("/proc/self/stat: bad environment bounds")
	}
	mem, err := os.OpenFile("/proc/self/mem", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("scrubbing our environment: %w", err)
	}
	defer mem.Close()
	block := make([]byte, end-start)
	if _, err := mem.ReadAt(block, start); err != nil {
		return fmt.Errorf("scrubbing our environment: %w", err)
	}
	off := 0
	for off < len(block) {
		n := bytes.IndexByte(block[off:], 0)
		if n < 0 {
			n = len(block) - off
		}
		if n > 0 && drop(string(block[off:off+n])) {
			if _, err := mem.WriteAt(make([]byte, n), start+int64(off)); err != nil {
				return fmt.Errorf("scrubbing our environment: %w", err)
			}
		}
		off += n + 1
	}
	return nil
}
