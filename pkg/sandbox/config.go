package sandbox

// InitArg is the hidden first argument that makes the sluice binary act as
// the sandbox's init (see MaybeInit). It is not a cobra command: it never
// appears in --help.
const InitArg = "__sandbox-init"

// Config is what the init needs to build the sandbox and run the command.
// It is sent over a pipe as JSON and holds no secret.
type Config struct {
	Argv []string `json:"argv"`
	Env  []string `json:"env"`
	Dir  string   `json:"dir,omitempty"`

	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups,omitempty"`

	// Binds are files (the trust bundle, the Java store) mounted read-only
	// over host files that exist (Target), in the sandbox's mount namespace.
	Binds []Bind `json:"binds,omitempty"`
	// Hide are directories covered by an empty read-only tmpfs (sluice's
	// state directory, /run/sluice, bpffs pin directories).
	Hide []string `json:"hide,omitempty"`
	// Scratch is an empty directory, readable by root only, where the init
	// builds the sandbox's /dev before moving it in place.
	Scratch string `json:"scratch"`
	// Cgroup2 is where the cgroup2 hierarchy is mounted on the host
	// (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid host).
	Cgroup2 string `json:"cgroup2"`
}

// Bind mounts Source over Target, read-only.
type Bind struct {
	Source string `json:"source"`
	Target string `json:"target"`
}
