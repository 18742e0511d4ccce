package doctor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/sluice-dev/sluice/pkg/cgroup"
	"github.com/sluice-dev/sluice/pkg/defaults"
	"golang.org/x/sys/unix"
)

// Status of one check.
type Status string

// Statuses. A warning does not fail the run unless strict.
const (
	OK   Status = "ok"
	Warn Status = "warn"
	Fail Status = "fail"
)

// Result is one check's outcome.
type Result struct {
	Check  string `json:"check"`
	Status Status `json:"status"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// Report is the outcome of Run.
type Report struct {
	Results []Result `json:"results"`
	// CgroupMode is "unified", "hybrid" or "legacy".
	CgroupMode string `json:"cgroup_mode"`
	// CgroupMount is the cgroup2 mount point ("" in legacy mode).
	CgroupMount string `json:"cgroup_mount,omitempty"`
	OK          bool   `json:"ok"`
}

// Env is where the checks look. Zero fields take the host's values.
type Env struct {
	MountInfo  string // default /proc/self/mountinfo
	ProcStatus string // default /proc/self/status
	BPFFS      string // default /sys/fs/bpf
	// KernelRelease returns `uname -r`.
	KernelRelease func() (string, error)
	// BPFProbe creates and closes a tiny BPF map (the bpf syscall works and
	// the caller may use it).
	BPFProbe func() error
	// SpliceProbe loads the kernel splice programs (nil: the real probe,
	// enforcer.ProbeSplice).
	SpliceProbe func() error
	// Socket is the daemon's control socket; Daemon probes it (nil: the
	// daemon check only looks for the socket file).
	Socket string
	Daemon func(ctx context.Context) error
	// Strict turns warnings into failures.
	Strict bool
	// Skip names checks not to run (Result.Check values, e.g. "daemon").
	Skip []string
}

// Checks are the names of every check, in the order Run reports them.
var Checks = []string{"kernel", "bpf syscall", "cgroup v2", "bpffs", "capabilities", "kernel splice", "daemon"}

func (e *Env) defaults() {
	if e.MountInfo == "" {
		e.MountInfo = "/proc/self/mountinfo"
	}
	if e.ProcStatus == "" {
		e.ProcStatus = "/proc/self/status"
	}
	if e.BPFFS == "" {
		e.BPFFS = defaults.BPFFS
	}
	if e.KernelRelease == nil {
		e.KernelRelease = unameRelease
	}
	if e.BPFProbe == nil {
		e.BPFProbe = probeBPF
	}
}

// MinKernel is the oldest kernel sluice supports (ring buffer, getpeername
// hooks, ancestor cgroup ids).
var MinKernel = [2]int{5, 8}

// Capabilities sluice's daemon needs, by bit number.
var neededCaps = []struct {
	bit  uint
	name string
	why  string
}{
	{39, "CAP_BPF", "load eBPF programs and create maps"},
	{21, "CAP_SYS_ADMIN", "attach programs to cgroups, pin to bpffs, enter network namespaces"},
	{12, "CAP_NET_ADMIN", "cgroup sock_addr and sockops programs"},
}

type mount struct {
	point, fstype, source string
}

// Run runs every check.
func Run(ctx context.Context, env Env) Report {
	env.defaults()
	var rep Report
	skip := map[string]bool{}
	for _, c := range env.Skip {
		skip[c] = true
	}
	add := func(r Result) {
		if !skip[r.Check] {
			rep.Results = append(rep.Results, r)
		}
	}

	add(checkKernel(env))
	add(checkBPF(env))

	mounts, merr := readMounts(env.MountInfo)
	if merr != nil {
		add(Result{Check: "cgroup v2", Status: Fail, Detail: merr.Error(), Fix: "run on Linux with /proc mounted"})
	} else {
		r, mode, mnt := checkCgroup(mounts)
		rep.CgroupMode, rep.CgroupMount = mode, mnt
		add(r)
		add(checkBPFFS(env, mounts))
	}
	add(checkCaps(env))
	if !skip["kernel splice"] {
		add(checkSplice(env))
	}
	if !skip["daemon"] {
		add(checkDaemon(ctx, env))
	}

	rep.OK = true
	for _, r := range rep.Results {
		if r.Status == Fail || (env.Strict && r.Status == Warn) {
			rep.OK = false
		}
	}
	return rep
}

func checkKernel(env Env) Result {
	rel, err := env.KernelRelease()
	if err != nil {
		return Result{Check: "kernel", Status: Fail, Detail: err.Error(), Fix: "run on Linux " + verString(MinKernel) + " or newer"}
	}
	maj, min, ok := parseRelease(rel)
	if !ok {
		return Result{Check: "kernel", Status: Warn, Detail: fmt.Sprintf("cannot parse kernel release %q", rel), Fix: "make sure the kernel is " + verString(MinKernel) + " or newer"}
	}
	if maj < MinKernel[0] || (maj == MinKernel[0] && min < MinKernel[1]) {
		return Result{Check: "kernel", Status: Fail, Detail: fmt.Sprintf("kernel %s is older than %s", rel, verString(MinKernel)),
			Fix: "upgrade to Linux " + verString(MinKernel) + " or newer (ring buffer, getpeername hooks and ancestor cgroup ids appeared in 5.8)"}
	}
	return Result{Check: "kernel", Status: OK, Detail: "Linux " + rel}
}

func verString(v [2]int) string { return fmt.Sprintf("%d.%d", v[0], v[1]) }

func parseRelease(rel string) (int, int, bool) {
	parts := strings.SplitN(rel, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	maj, err1 := strconv.Atoi(parts[0])
	minStr := parts[1]
	if i := strings.IndexFunc(minStr, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		minStr = minStr[:i]
	}
	min, err2 := strconv.Atoi(minStr)
	return maj, min, err1 == nil && err2 == nil
}

func checkBPF(env Env) Result {
	err := env.BPFProbe()
	switch {
	case err == nil:
		return Result{Check: "bpf syscall", Status: OK, Detail: "bpf(2) works: created a map"}
	case errors.Is(err, unix.ENOSYS):
		return Result{Check: "bpf syscall", Status: Fail, Detail: "bpf(2) is not implemented by this kernel",
			Fix: "use a kernel built with CONFIG_BPF_SYSCALL=y and CONFIG_CGROUP_BPF=y"}
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return Result{Check: "bpf syscall", Status: Fail, Detail: "bpf(2) refused: " + err.Error(),
			Fix: "run as root (or with CAP_BPF and CAP_SYS_ADMIN); in a container, allow the bpf syscall in its seccomp profile"}
	default:
		return Result{Check: "bpf syscall", Status: Fail, Detail: "bpf(2): " + err.Error(),
			Fix: "check the kernel's BPF support (CONFIG_BPF_SYSCALL, CONFIG_CGROUP_BPF) and the memlock limit (ulimit -l)"}
	}
}

// probeBPF creates a one-entry array map and closes it.
func probeBPF() error {
	attr := struct {
		mapType, keySize, valueSize, maxEntries, flags uint32
	}{mapType: 2 /* BPF_MAP_TYPE_ARRAY */, keySize: 4, valueSize: 4, maxEntries: 1}
	fd, _, errno := unix.Syscall(unix.SYS_BPF, 0 /* BPF_MAP_CREATE */, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return errno
	}
	return unix.Close(int(fd))
}

func unameRelease() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("uname: %w", err)
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

func readMounts(path string) ([]mount, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading mounts: %w", err)
	}
	defer f.Close()
	var out []mount
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		a, b := strings.Fields(pre), strings.Fields(post)
		if len(a) < 5 || len(b) < 2 {
			continue
		}
		out = append(out, mount{point: cgroup.UnescapeMount(a[4]), fstype: b[0], source: b[1]})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading mounts: %w", err)
	}
	return out, nil
}

// checkCgroup classifies the mount mode: unified (only cgroup2), hybrid
// (cgroup2 beside v1 hierarchies, typically at /sys/fs/cgroup/unified) or
// legacy (no cgroup2).
func checkCgroup(ms []mount) (Result, string, string) {
	v2, v1 := "", 0
	for _, m := range ms {
		switch m.fstype {
		case "cgroup2":
			if v2 == "" {
				v2 = m.point
			}
		case "cgroup":
			v1++
		}
	}
	switch {
	case v2 == "":
		return Result{Check: "cgroup v2", Status: Fail, Detail: "legacy mode: no cgroup2 filesystem is mounted",
			Fix: "boot with systemd.unified_cgroup_hierarchy=1 (unified), or mount one: mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 none /sys/fs/cgroup/unified"}, "legacy", ""
	case v1 > 0:
		return Result{Check: "cgroup v2", Status: OK, Detail: fmt.Sprintf("hybrid mode: cgroup2 at %s beside %d cgroup v1 hierarchies; sandboxes are cgroups under %s", v2, v1, v2)}, "hybrid", v2
	default:
		return Result{Check: "cgroup v2", Status: OK, Detail: "unified mode: cgroup2 at " + v2}, "unified", v2
	}
}

func checkBPFFS(env Env, ms []mount) Result {
	for _, m := range ms {
		if m.point == env.BPFFS && m.fstype == "bpf" {
			return Result{Check: "bpffs", Status: OK, Detail: "bpffs mounted at " + env.BPFFS}
		}
	}
	return Result{Check: "bpffs", Status: Fail,
		Detail: "no bpf filesystem at " + env.BPFFS + ": pinned links cannot survive a daemon restart (sandboxes would fail open when it exits)",
		Fix:    "mount it: mount -t bpf bpffs " + env.BPFFS + " (persist: add \"bpffs " + env.BPFFS + " bpf defaults 0 0\" to /etc/fstab)"}
}

func checkCaps(env Env) Result {
	data, err := os.ReadFile(env.ProcStatus)
	if err != nil {
		return Result{Check: "capabilities", Status: Fail, Detail: err.Error(), Fix: "run on Linux with /proc mounted"}
	}
	var eff uint64
	found := false
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			eff, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			found = err == nil
		}
	}
	if !found {
		return Result{Check: "capabilities", Status: Fail, Detail: "no CapEff line in " + env.ProcStatus, Fix: "run on Linux with /proc mounted"}
	}
	var missing, have []string
	for _, c := range neededCaps {
		if eff&(1<<c.bit) == 0 {
			missing = append(missing, c.name+" ("+c.why+")")
		} else {
			have = append(have, c.name)
		}
	}
	if len(missing) > 0 {
		return Result{Check: "capabilities", Status: Fail, Detail: "missing " + strings.Join(missing, ", "),
			Fix: "run sluice as root, or grant them: systemd AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_SYS_ADMIN; Kubernetes securityContext.capabilities.add"}
	}
	return Result{Check: "capabilities", Status: OK, Detail: strings.Join(have, ", ") + " effective"}
}

func checkDaemon(ctx context.Context, env Env) Result {
	if env.Socket == "" {
		return Result{Check: "daemon", Status: Warn, Detail: "no control socket configured", Fix: "pass --socket or set SLUICE_SOCKET"}
	}
	fi, err := os.Stat(env.Socket)
	if errors.Is(err, os.ErrNotExist) {
		return Result{Check: "daemon", Status: Warn, Detail: "the daemon is not running (no socket at " + env.Socket + ")",
			Fix: "start it: systemctl start sluice, or sluice daemon --config " + defaults.ConfigFile}
	}
	if err != nil {
		return Result{Check: "daemon", Status: Fail, Detail: err.Error(), Fix: "run sluice doctor as root"}
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return Result{Check: "daemon", Status: Fail, Detail: env.Socket + " is not a socket", Fix: "remove it and restart the daemon"}
	}
	if env.Daemon == nil {
		return Result{Check: "daemon", Status: OK, Detail: "control socket " + env.Socket + " exists"}
	}
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := env.Daemon(cctx); err != nil {
		return Result{Check: "daemon", Status: Fail, Detail: "the daemon does not answer on " + env.Socket + ": " + err.Error(),
			Fix: "restart it (systemctl restart sluice) and read its log (journalctl -u sluice); the socket is for root only"}
	}
	return Result{Check: "daemon", Status: OK, Detail: "the daemon answers on " + env.Socket}
}
