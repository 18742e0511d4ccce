package enforcer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// DefaultPinDir is where maps and links are pinned. The version component
// changes whenever a map's key or value layout changes: a pinned map of equal
// size but a different layout would otherwise be silently reused.
const DefaultPinDir = "/sys/fs/bpf/sluice/v1"

// Protocols, as in the counters and events.
const (
	ProtoTCP = 6
	ProtoUDP = 17
)

// Flag bits of allow entries and sandboxes (enum allow_flag and enum
// sandbox_flag of bpf/sluice.h).
const (
	alDirect = uint32(sluiceAllowFlagAL_DIRECT)
	alDeny   = uint32(sluiceAllowFlagAL_DENY)
	alStatic = uint32(sluiceAllowFlagAL_STATIC)
	alUDP    = uint32(sluiceAllowFlagAL_UDP)
	sbAudit  = uint32(sluiceSandboxFlagSB_AUDIT)
	sbFence  = uint32(sluiceSandboxFlagSB_FENCE)
	sbShared = uint32(sluiceSandboxFlagSB_SHARED)
)

// Config configures an Enforcer.
type Config struct {
	// PinDir is the bpffs directory for pinned maps and links. Empty means
	// DefaultPinDir. bpffs is mounted at its root if it is not.
	PinDir string
}

// Enforcer owns the loaded eBPF programs and the pinned maps shared by every
// sandbox on the host. It is safe for concurrent use. Close releases the
// process's handles; pinned links and maps stay, so enforcement outlives the
// process (fail closed).
type Enforcer struct {
	log    *slog.Logger
	pinDir string
	objs   sluiceObjects

	mu  sync.Mutex // serialises read-modify-write of allow entries
	idx allowIndex // each sandbox's allow keys (index.go); guarded by mu
	cmu sync.Mutex // serialises the daemon's read-modify-write of counters
}

// Open loads the programs, creating or reusing the pinned maps under the pin
// directory. The caller must Close the Enforcer.
func Open(cfg Config, log *slog.Logger) (*Enforcer, error) {
	pinDir := cfg.PinDir
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raising the memlock limit: %w", err)
	}
	if err := EnsureBPFFS(pinDir); err != nil {
		return nil, err
	}
	mapDir := filepath.Join(pinDir, "maps")
	if err := os.MkdirAll(mapDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating pin directory: %w", err)
	}
	if err := checkPinsOutlive(pinDir); err != nil {
		return nil, err
	}
	spec, err := loadSluice()
	if err != nil {
		return nil, fmt.Errorf("reading the embedded eBPF object: %w", err)
	}
	for name, m := range spec.Maps {
		// The ring buffer stays private to this process: each process that
		// loads programs reads its own programs' events.
		if name == "events" || name == ".bss" || name == ".data" || name == ".rodata" {
			continue
		}
		m.Pinning = ebpf.PinByName
	}
	e := &Enforcer{log: log, pinDir: pinDir}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: mapDir}}
	err = spec.LoadAndAssign(&e.objs, opts)
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		// Pins of a development build with another layout. Replace them
		// only when no sandbox uses them.
		if ids, rerr := RegisteredSandboxes(pinDir); rerr == nil && len(ids) == 0 {
			log.Warn("replacing pinned maps with an incompatible layout (no sandbox uses them)", "dir", mapDir)
			entries, _ := os.ReadDir(mapDir)
			for _, en := range entries {
				os.Remove(filepath.Join(mapDir, en.Name()))
			}
			err = spec.LoadAndAssign(&e.objs, opts)
		} else if rerr == nil {
			return nil, fmt.Errorf("the pinned maps in %s have another layout and %d sandboxes still use them: detach them, or use another --pin-dir: %w", mapDir, len(ids), err)
		}
	}
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("loading eBPF programs (verifier log follows):\n%+v", ve)
		}
		return nil, fmt.Errorf("loading eBPF programs: %w", err)
	}
	return e, nil
}

// Close releases this process's handles on programs and maps. Pinned objects
// remain.
func (e *Enforcer) Close() error { return e.objs.Close() }

// PinDir returns the bpffs directory in use.
func (e *Enforcer) PinDir() string { return e.pinDir }

// EnsureBPFFS mounts bpffs at /sys/fs/bpf when dir is below it and no bpffs
// is mounted there.
func EnsureBPFFS(dir string) error {
	root := "/sys/fs/bpf"
	var fs unix.Statfs_t
	if err := unix.Statfs(root, &fs); err == nil && fs.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", root, err)
	}
	if err := unix.Mount("bpffs", root, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mounting bpffs at %s (needs CAP_SYS_ADMIN; or mount it yourself: mount -t bpf bpffs %s): %w", root, root, err)
	}
	return nil
}

// SandboxConfig is a sandbox's kernel-side configuration.
type SandboxConfig struct {
	// ProxyPort is the proxy listener's port (TCP, 127.0.0.1 and ::1); TCP
	// to port 53 goes there too, and the proxy hands it to the resolver.
	ProxyPort uint16
	// DNSPort is the resolver's UDP port: 127.0.0.1, and ::1 unless Shared.
	DNSPort uint16
	Audit   bool // record would-be refusals, refuse nothing but metadata
	// Fence marks a fence (sluice daemon --fence): it decides only for the
	// cgroups below it that no other registered sandbox claims.
	Fence bool
	// Shared says ProxyPort is the daemon's listener shared by every
	// sandbox of the host network namespace: the kernel keys the
	// sandbox's records by sandbox 0 (SharedOriginalDst, SharedDNSOrigin
	// read them), and its IPv6 UDP DNS goes to [::1]:ProxyPort over UDP,
	// the shared resolver socket.
	Shared bool
}

// kernelCfg is cfg as the kernel's sandbox table holds it.
func (cfg SandboxConfig) kernelCfg() sluiceSandboxCfg {
	v := sluiceSandboxCfg{ProxyPort: cfg.ProxyPort, DnsPort: cfg.DNSPort}
	if cfg.Audit {
		v.Flags |= sbAudit
	}
	if cfg.Fence {
		v.Flags |= sbFence
	}
	if cfg.Shared {
		v.Flags |= sbShared
	}
	return v
}

type attachSpec struct {
	name string
	typ  ebpf.AttachType
	prog func(*sluiceObjects) *ebpf.Program
}

var attachments = []attachSpec{
	{"connect4", ebpf.AttachCGroupInet4Connect, func(o *sluiceObjects) *ebpf.Program { return o.SluiceConnect4 }},
	{"connect6", ebpf.AttachCGroupInet6Connect, func(o *sluiceObjects) *ebpf.Program { return o.SluiceConnect6 }},
	{"sendmsg4", ebpf.AttachCGroupUDP4Sendmsg, func(o *sluiceObjects) *ebpf.Program { return o.SluiceSendmsg4 }},
	{"sendmsg6", ebpf.AttachCGroupUDP6Sendmsg, func(o *sluiceObjects) *ebpf.Program { return o.SluiceSendmsg6 }},
	{"recvmsg4", ebpf.AttachCGroupUDP4Recvmsg, func(o *sluiceObjects) *ebpf.Program { return o.SluiceRecvmsg4 }},
	{"recvmsg6", ebpf.AttachCGroupUDP6Recvmsg, func(o *sluiceObjects) *ebpf.Program { return o.SluiceRecvmsg6 }},
	{"getpeername4", ebpf.AttachCgroupInet4GetPeername, func(o *sluiceObjects) *ebpf.Program { return o.SluiceGetpeername4 }},
	{"getpeername6", ebpf.AttachCgroupInet6GetPeername, func(o *sluiceObjects) *ebpf.Program { return o.SluiceGetpeername6 }},
	{"sock_create", ebpf.AttachCGroupInetSockCreate, func(o *sluiceObjects) *ebpf.Program { return o.SluiceSockCreate }},
	{"bind4", ebpf.AttachCGroupInet4Bind, func(o *sluiceObjects) *ebpf.Program { return o.SluiceBind4 }},
	{"bind6", ebpf.AttachCGroupInet6Bind, func(o *sluiceObjects) *ebpf.Program { return o.SluiceBind6 }},
	{"sockops", ebpf.AttachCGroupSockOps, func(o *sluiceObjects) *ebpf.Program { return o.SluiceSockops }},
	{"skb_egress", ebpf.AttachCGroupInetEgress, func(o *sluiceObjects) *ebpf.Program { return o.SluiceSkbEgress }},
	{"setsockopt", ebpf.AttachCGroupSetsockopt, func(o *sluiceObjects) *ebpf.Program { return o.SluiceSetsockopt }},
}

func (e *Enforcer) linkDir(id uint64) string {
	return filepath.Join(e.pinDir, "links", strconv.FormatUint(id, 10))
}

// ErrSandboxTableFull is returned by Attach when the kernel's sandbox table
// has no room left.
var ErrSandboxTableFull = errors.New("the kernel sandbox table is full: detach unused sandboxes first")

// Attach registers the cgroup at path (whose id is id) as a sandbox and
// attaches the programs to it with pinned links. Links already pinned for
// this id (a restarted daemon re-adopting a sandbox) are updated in place to
// this process's programs, with no gap in enforcement. Attach on an attached
// sandbox replaces its configuration.
func (e *Enforcer) Attach(path string, id uint64, cfg SandboxConfig) (*Sandbox, error) {
	v := cfg.kernelCfg()
	// Register before attaching: the programs refuse every socket of a
	// cgroup they cannot find in the table.
	e.mu.Lock()
	var cur sluiceSandboxCfg
	fresh := e.objs.Sandboxes.Lookup(id, &cur) != nil
	if err := e.objs.Sandboxes.Update(id, v, ebpf.UpdateAny); err != nil {
		e.mu.Unlock()
		if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.ENOMEM) {
			return nil, fmt.Errorf("registering sandbox %d: %w", id, ErrSandboxTableFull)
		}
		return nil, fmt.Errorf("registering sandbox %d: %w", id, err)
	}
	if fresh {
		// Not registered before: no allow entries (Detach removes them
		// before the registration), so the index needs no walk.
		e.freshLocked(id)
	}
	e.mu.Unlock()
	dir := e.linkDir(id)
	_, statErr := os.Stat(dir)
	pinned := statErr == nil // links of an earlier process may be there
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating link pin directory: %w", err)
	}
	// One descriptor of the cgroup for the 14 links, closed on return (the
	// pinned links keep the attachment).
	cg, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening cgroup %s: %w", path, err)
	}
	defer cg.Close()
	s := &Sandbox{e: e, id: id, path: path}
	s.shared.Store(cfg.Shared)
	for _, a := range attachments {
		pin := filepath.Join(dir, a.name)
		prog := a.prog(&e.objs)
		if pinned {
			if l, err := link.LoadPinnedLink(pin, nil); err == nil {
				err = l.Update(prog)
				l.Close()
				if err == nil {
					continue
				}
				// A stale pin (its cgroup is gone): replace it.
				os.Remove(pin)
			}
		}
		l, err := link.AttachRawLink(link.RawLinkOptions{Target: int(cg.Fd()), Program: prog, Attach: a.typ})
		if err != nil {
			s.Detach()
			return nil, fmt.Errorf("attaching %s to %s: %w", a.name, path, err)
		}
		err = l.Pin(pin)
		l.Close()
		if err != nil {
			s.Detach()
			return nil, fmt.Errorf("pinning the %s link: %w", a.name, err)
		}
	}
	return s, nil
}

// Sandbox returns a handle on a sandbox already registered under id (for
// example by an earlier daemon), without attaching anything.
func (e *Enforcer) Sandbox(path string, id uint64) *Sandbox {
	return &Sandbox{e: e, id: id, path: path}
}

// Registered reports whether id is in the kernel's sandbox table.
func (e *Enforcer) Registered(id uint64) bool {
	var v sluiceSandboxCfg
	return e.objs.Sandboxes.Lookup(id, &v) == nil
}

// SandboxCount returns the number of registered sandboxes.
func (e *Enforcer) SandboxCount() int {
	n := 0
	var k uint64
	var v sluiceSandboxCfg
	it := e.objs.Sandboxes.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n
}

// Sandbox is one registered cgroup. Its methods are safe for concurrent use.
type Sandbox struct {
	e    *Enforcer
	id   uint64
	path string
	// shared: the sandbox has SandboxConfig.Shared, so its records are
	// keyed by sandbox 0 (see key).
	shared atomic.Bool
}

// key is the sandbox's part of a record key: 0 when it is Shared.
func (s *Sandbox) key() uint64 {
	if s.shared.Load() {
		return 0
	}
	return s.id
}

// ID returns the sandbox's cgroup id.
func (s *Sandbox) ID() uint64 { return s.id }

// Detach removes the links, the registration, the allowlist entries and
// the refusal counters of the sandbox.
func (s *Sandbox) Detach() error {
	var errs []error
	dir := s.e.linkDir(s.id)
	for _, a := range attachments {
		pin := filepath.Join(dir, a.name)
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				os.Remove(pin)
			}
			continue
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpinning %s: %w", a.name, err))
		}
		l.Close()
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	// The allow entries go before the registration: an id that is not
	// registered never has entries (index.go relies on it), and a crash
	// in between leaves a registered sandbox with nothing allowed.
	s.e.mu.Lock()
	for k := range s.e.keysLocked(s.id) {
		if err := s.e.objs.Allow.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("allowlist delete: %w", err))
		}
	}
	s.e.deleteListenLocked(s.id, nil, nil)
	if err := s.e.objs.Sandboxes.Delete(s.id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("unregistering: %w", err))
	}
	delete(s.e.idx, s.id)
	s.e.mu.Unlock()
	s.e.deleteCounters(s.id)
	return errors.Join(errs...)
}

func addrKey(a netip.Addr) [16]byte {
	if a.Is4() {
		a = netip.AddrFrom16(a.As16())
	}
	return a.As16()
}

// monoNow returns CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns.
func monoNow() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano())
}

// monoAt converts a wall-clock time to the kernel's monotonic nanoseconds.
func monoAt(t time.Time) uint64 {
	d := time.Until(t)
	n := monoNow() + d
	if n <= 0 {
		return 1
	}
	return uint64(n)
}

// wallAt converts kernel monotonic nanoseconds to wall-clock time.
func wallAt(ns uint64) time.Time {
	return time.Now().Add(time.Duration(ns) - monoNow())
}

// Allow lets the sandbox connect to addr until the given time (through the
// proxy, or directly when direct is set). An existing entry is extended,
// never shortened, and static entries are left alone.
func (s *Sandbox) Allow(addr netip.Addr, until time.Time, direct bool) error {
	k := sluiceAllowKey{Prefixlen: 64 + 128, Addr: addrKey(addr)}
	binary.NativeEndian.PutUint64(k.Sandbox[:], s.id)
	exp := monoAt(until)
	s.e.mu.Lock()
	defer s.e.mu.Unlock()
	var cur sluiceAllowVal
	if err := s.e.objs.Allow.Lookup(&k, &cur); err == nil {
		if cur.Flags&alStatic != 0 || cur.ExpiresNs == 0 {
			return nil
		}
		if cur.ExpiresNs > exp {
			exp = cur.ExpiresNs
		}
	}
	v := sluiceAllowVal{ExpiresNs: exp}
	if direct {
		v.Flags |= alDirect
	}
	if err := s.e.objs.Allow.Update(&k, &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("allowlist update for %s: %w", addr, err)
	}
	s.e.noteLocked(&k, false)
	return nil
}

// Static is a policy CIDR entry for the kernel allowlist.
type Static struct {
	Prefix netip.Prefix
	Ports  []uint16 // empty: any port; at most 8
	Direct bool
	Deny   bool
	UDP    bool // direct entries only
}

// SetStatic replaces the sandbox's static (policy CIDR) entries.
func (s *Sandbox) SetStatic(entries []Static) error {
	s.e.mu.Lock()
	defer s.e.mu.Unlock()
	want := map[sluiceAllowKey]sluiceAllowVal{}
	for _, en := range entries {
		if len(en.Ports) > 8 {
			return fmt.Errorf("cidr %s: at most 8 ports per range in the kernel allowlist", en.Prefix)
		}
		p := en.Prefix.Masked()
		bits := p.Bits()
		if p.Addr().Is4() {
			bits += 96
		}
		k := sluiceAllowKey{Prefixlen: uint32(64 + bits), Addr: addrKey(p.Addr())}
		binary.NativeEndian.PutUint64(k.Sandbox[:], s.id)
		v := sluiceAllowVal{Flags: alStatic, Nports: uint16(len(en.Ports))}
		copy(v.Ports[:], en.Ports)
		if en.Direct {
			v.Flags |= alDirect
		}
		if en.Deny {
			v.Flags |= alDeny
		}
		if en.UDP {
			v.Flags |= alUDP
		}
		want[k] = v
	}
	// Write the new entries first, then remove stale ones: no moment where
	// a still-allowed range is missing.
	have := s.e.keysLocked(s.id)
	for k, v := range want {
		if err := s.e.objs.Allow.Update(&k, &v, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("allowlist update for %s: %w", netip.AddrFrom16(k.Addr), err)
		}
		have[k] = true
	}
	for k, static := range have {
		if _, keep := want[k]; keep || !static {
			continue
		}
		if err := s.e.objs.Allow.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("allowlist delete for %s: %w", netip.AddrFrom16(k.Addr), err)
		}
		delete(have, k)
	}
	return nil
}

// SetConfig updates the sandbox's kernel configuration in place.
func (s *Sandbox) SetConfig(cfg SandboxConfig) error {
	if err := s.e.objs.Sandboxes.Update(s.id, cfg.kernelCfg(), ebpf.UpdateExist); err != nil {
		return fmt.Errorf("updating sandbox %d: %w", s.id, err)
	}
	s.shared.Store(cfg.Shared)
	return nil
}

// GC removes allowlist entries that expired before now-grace. The kernel
// already refuses expired entries; GC keeps the map small. The walk of the
// whole map runs without the lock (attaches and DNS answers go on); each
// candidate is checked again under it, since Allow may have extended it.
func (e *Enforcer) GC(grace time.Duration) int {
	limit := uint64(monoNow() - grace)
	expired := func(v *sluiceAllowVal) bool { return v.ExpiresNs != 0 && v.ExpiresNs < limit }
	var k sluiceAllowKey
	var v sluiceAllowVal
	var cand []sluiceAllowKey
	it := e.objs.Allow.Iterate()
	for it.Next(&k, &v) {
		if expired(&v) {
			cand = append(cand, k)
		}
	}
	n := 0
	e.mu.Lock()
	defer e.mu.Unlock()
	for i := range cand {
		if e.objs.Allow.Lookup(&cand[i], &v) != nil || !expired(&v) {
			continue
		}
		if e.objs.Allow.Delete(&cand[i]) == nil {
			n++
		}
		e.forgetKeyLocked(&cand[i])
	}
	return n
}

// AllowCount returns the number of allowlist entries (map occupancy). It
// reads them 4096 at a time (a full map has 512Ki), one by one where the
// kernel has no batch lookup for LPM tries.
func (e *Enforcer) AllowCount() int {
	keys := make([]sluiceAllowKey, 4096)
	vals := make([]sluiceAllowVal, len(keys))
	var cursor ebpf.MapBatchCursor
	n := 0
	for {
		got, err := e.objs.Allow.BatchLookup(&cursor, keys, vals, nil)
		n += got
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return n
		}
		if err != nil {
			break
		}
	}
	n = 0
	var k sluiceAllowKey
	var v sluiceAllowVal
	it := e.objs.Allow.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n
}

func (e *Enforcer) deleteCounters(id uint64) {
	var k sluiceCounterKey
	var v sluiceCounterVal
	var del []sluiceCounterKey
	it := e.objs.Counters.Iterate()
	for it.Next(&k, &v) {
		if k.Sandbox == id {
			del = append(del, k)
		}
	}
	for i := range del {
		_ = e.objs.Counters.Delete(&del[i])
	}
}

// Origin is what the kernel recorded about a redirected connection.
type Origin struct {
	Dst      netip.AddrPort
	PID      uint32
	Comm     string
	CgroupID uint64
	Sandbox  uint64 // the sandbox whose program recorded it
}

// ErrNoOrigin means no original destination is recorded for a connection.
var ErrNoOrigin = errors.New("no original destination recorded for this connection")

// OriginalDst returns and forgets the original destination of the TCP
// connection whose client end is client.
func (s *Sandbox) OriginalDst(client netip.AddrPort) (Origin, error) {
	o, err := s.e.originalDst(s.key(), client)
	if err == nil && o.Sandbox != s.id {
		return Origin{}, ErrNoOrigin // another shared sandbox's connection
	}
	return o, err
}

// SharedOriginalDst returns and forgets the original destination of a TCP
// connection accepted on the shared proxy listener (SandboxConfig.Shared);
// Origin.Sandbox names the sandbox it came from.
func (e *Enforcer) SharedOriginalDst(client netip.AddrPort) (Origin, error) {
	return e.originalDst(0, client)
}

func (e *Enforcer) originalDst(sandbox uint64, client netip.AddrPort) (Origin, error) {
	b := origBufs.Get().(*origBuf)
	defer origBufs.Put(b)
	b.k = sluiceOrigKey{Sandbox: sandbox, Addr: addrKey(client.Addr().Unmap()), Port: client.Port(), Proto: ProtoTCP}
	if err := e.objs.OrigByTuple.LookupAndDelete(&b.k, &b.o); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Origin{}, ErrNoOrigin
		}
		return Origin{}, fmt.Errorf("original destination lookup: %w", err)
	}
	return toOrigin(&b.o), nil
}

// origBuf keeps the key and value of an origin lookup off the heap: the
// map calls take them as interfaces.
type origBuf struct {
	k sluiceOrigKey
	o sluiceOrig
}

var origBufs = sync.Pool{New: func() any { return new(origBuf) }}

func toOrigin(o *sluiceOrig) Origin {
	return Origin{
		Dst:      netip.AddrPortFrom(netip.AddrFrom16(o.Addr).Unmap(), o.Port),
		PID:      o.Pid,
		Comm:     cString(o.Comm[:]),
		CgroupID: o.Cgroup,
		Sandbox:  o.Sandbox,
	}
}

func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// Revoke removes a DNS-learned allowlist entry (static entries stay).
// Established connections are not affected.
func (s *Sandbox) Revoke(addr netip.Addr) error {
	k := sluiceAllowKey{Prefixlen: 64 + 128, Addr: addrKey(addr)}
	binary.NativeEndian.PutUint64(k.Sandbox[:], s.id)
	s.e.mu.Lock()
	defer s.e.mu.Unlock()
	var cur sluiceAllowVal
	if err := s.e.objs.Allow.Lookup(&k, &cur); err != nil || cur.Flags&alStatic != 0 {
		return nil
	}
	if err := s.e.objs.Allow.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("allowlist delete for %s: %w", addr, err)
	}
	s.e.forgetKeyLocked(&k)
	return nil
}

// AllowCounts returns the number of allowlist entries per sandbox id.
func (e *Enforcer) AllowCounts() map[uint64]int {
	out := map[uint64]int{}
	var k sluiceAllowKey
	var v sluiceAllowVal
	it := e.objs.Allow.Iterate()
	for it.Next(&k, &v) {
		out[binary.NativeEndian.Uint64(k.Sandbox[:])]++
	}
	return out
}

// DNSOrigin returns the process that sent the UDP DNS query whose source
// port is port (as the sandbox's resolver saw it). The entry stays: a
// socket sends several queries.
func (s *Sandbox) DNSOrigin(port uint16) (Origin, bool) {
	o, ok := s.e.dnsOrigin(s.key(), port)
	return o, ok && o.Sandbox == s.id
}

// SharedDNSOrigin returns the process, and in Origin.Sandbox the sandbox,
// that sent the UDP DNS query from client port port to the shared resolver
// socket (SandboxConfig.Shared). The entry stays, like DNSOrigin's.
func (e *Enforcer) SharedDNSOrigin(port uint16) (Origin, bool) {
	return e.dnsOrigin(0, port)
}

func (e *Enforcer) dnsOrigin(sandbox uint64, port uint16) (Origin, bool) {
	b := origBufs.Get().(*origBuf)
	defer origBufs.Put(b)
	b.k = sluiceOrigKey{Sandbox: sandbox, Port: port, Proto: ProtoUDP}
	if err := e.objs.DnsOrigin.Lookup(&b.k, &b.o); err != nil {
		return Origin{}, false
	}
	return toOrigin(&b.o), true
}
