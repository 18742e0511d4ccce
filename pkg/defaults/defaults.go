package defaults

import "os"

// Files and directories of an installed sluice.
const (
	// ConfigFile is the daemon's configuration, as the systemd unit passes
	// it with --config (scripts/deploy/config.yaml installed).
	ConfigFile = "/etc/sluice/config.yaml"
	// PolicyDir holds named policies (oci-hook, kube-watch).
	PolicyDir = "/etc/sluice/policies"
	// StateDir keeps sandbox records, per-sandbox CAs, the secret store, its
	// key and the callback signing key.
	StateDir = "/var/lib/sluice"
	// AuditLog is the audit log the packaged daemon writes (the "audit" of
	// ConfigFile), and what `sluice logs` reads by default.
	AuditLog = "/var/log/sluice/audit.jsonl"
	// Socket is the daemon's control socket (mode 0600, root only).
	Socket = "/run/sluice/sluice.sock"
	// RunDir holds the records of live `sluice run` sandboxes.
	RunDir = "/run/sluice/run"
	// BPFFS is where the bpf filesystem is mounted.
	BPFFS = "/sys/fs/bpf"
	// PinDir is where maps and links are pinned, on BPFFS. Its version
	// component changes whenever a pinned map's layout does.
	PinDir = BPFFS + "/sluice/v1"
)

// Environment variables that override a default for the commands.
const (
	EnvSocket    = "SLUICE_SOCKET"     // Socket
	EnvStateDir  = "SLUICE_STATE_DIR"  // StateDir
	EnvAuditFile = "SLUICE_AUDIT_FILE" // the file `sluice logs` reads
)

// FromEnv returns the value of the environment variable env, or def when it
// is unset or empty.
func FromEnv(env, def string) string {
	if v := os.Getenv(env); v != "" {
		return v
	}
	return def
}
