package sandbox

import (
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
