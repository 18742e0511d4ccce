package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sluice-dev/sluice/pkg/api"
	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/cgroup"
	"github.com/sluice-dev/sluice/pkg/enforcer"
	"github.com/sluice-dev/sluice/pkg/policy"
	"github.com/sluice-dev/sluice/pkg/secrets"
	"github.com/sluice-dev/sluice/pkg/statedir"
	"github.com/sluice-dev/sluice/pkg/tlsca"
)

// Daemon is the long-running host agent: many sandboxes, a control API on a
// Unix socket, state that survives restarts. Create it with New and call
// Run once.
type Daemon struct {
	cfg     Config
	dir     statedir.Dir // cfg.StateDir
	log     *slog.Logger
	rt      *Runtime
	store   *secrets.Store
	audit   *audit.Logger
	bcast   *audit.Broadcast
	metrics *audit.Metrics

	mu        sync.Mutex
	sandboxes map[string]*managed
	fences    []*Sandbox // see fence.go
	ssync     stateSync  // see statesync.go
}

type managed struct {
	sb  *Sandbox
	rec record
}

// record is what the state dir keeps of one sandbox. The policy text is
// kept in the encrypted store (it may hold opaque values), not here.
type record struct {
	Name       string    `json:"name"`
	Cgroup     string    `json:"cgroup"`
	Netns      string    `json:"netns,omitempty"` // at attach time, for display
	CgroupID   uint64    `json:"cgroup_id"`
	PolicyFile string    `json:"policy_file"`
	ProxyPort  uint16    `json:"proxy_port"`
	DNSPort    uint16    `json:"dns_port"`
	Created    time.Time `json:"created"`
	Updated    time.Time `json:"updated"`
	// Labels survive restarts with the sandbox.
	Labels map[string]string `json:"labels,omitempty"`
}

// New prepares a daemon: loads the eBPF programs, opens the secret store,
// the audit sinks, the resolver and the proxy.
func New(cfg Config, log *slog.Logger) (*Daemon, error) {
	raiseNoFile(log) // logs what it could not do
	cfg.defaults()
	dir := statedir.Dir(cfg.StateDir)
	if err := os.MkdirAll(dir.Sandboxes(), 0o700); err != nil {
		return nil, fmt.Errorf("creating state dir: %w", err)
	}
	store, err := secrets.OpenStore(dir.Path(), secrets.KeySource{File: cfg.SecretKeyFile}, log.With("component", "secrets"))
	if err != nil {
		return nil, err
	}
	providers := []secrets.Provider{store}
	for _, spec := range cfg.SecretProviders {
		p, err := secrets.ParseProvider(spec, store, os.LookupEnv)
		if err != nil {
			return nil, fmt.Errorf("config secret_providers: %w", err)
		}
		providers = append(providers, p)
	}
	chain := secrets.NewChain(providers...)
	signer, err := secrets.LoadOrCreateSigningKey(dir.Path())
	if err != nil {
		return nil, err
	}

	bcast := audit.NewBroadcast()
	metrics := audit.NewMetrics()
	sinks := []audit.Sink{bcast, audit.NewMetricsSink(metrics)}
	sink, err := audit.OpenSink(cfg.Audit, audit.SinkOptions{File: audit.FileSinkOptions{MaxBytes: int64(cfg.AuditMaxSizeMB) << 20, Keep: cfg.AuditMaxFiles}})
	if err != nil {
		return nil, err
	}
	if sink != nil {
		sinks = append(sinks, sink)
	}
	alog := audit.NewLogger(log.With("component", "audit"), audit.LoggerOptions{}, sinks...)
	metrics.WatchLogger(alog)

	rt, err := NewRuntime(RuntimeOptions{
		DNSUpstreams: cfg.DNSUpstreams, DNSAllowLoopback: cfg.DNSAllowLoopback, UpstreamCAs: cfg.UpstreamCAs, PinDir: cfg.PinDir,
		Secrets: chain, Store: store, Signer: signer, Audit: alog,
	}, log)
	if err != nil {
		return nil, err
	}
	return &Daemon{
		cfg: cfg, dir: dir, log: log, rt: rt, store: store, audit: alog, bcast: bcast, metrics: metrics,
		sandboxes: map[string]*managed{},
	}, nil
}

// Run re-adopts the sandboxes recorded in the state dir, serves the control
// API until ctx is done, then stops serving. Sandboxes stay attached in the
// kernel: while no daemon runs, their connections fail (closed).
func (d *Daemon) Run(ctx context.Context) error {
	defer d.rt.Enforcer.Close()
	defer d.audit.Close()
	d.restore(ctx)
	if err := d.startFences(ctx); err != nil {
		d.stopFences()
		return err
	}
	defer d.stopFences()

	ln, err := listenControl(d.cfg.Socket)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: d.handler(), ConnContext: withPeerCred, ReadHeaderTimeout: 10 * time.Second}
	evCtx, stopEvents := context.WithCancel(ctx)
	defer stopEvents()
	go d.rt.KernelEvents(evCtx)
	go d.gcLoop(evCtx)
	go d.watchCgroups(evCtx)
	if d.cfg.Metrics != "" {
		if err := d.serveMetrics(evCtx); err != nil {
			ln.Close()
			return err
		}
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	d.log.Info("daemon ready", "socket", d.cfg.Socket, "sandboxes", len(d.List()))
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = srv.Shutdown(sctx)
	cancel()
	os.Remove(d.cfg.Socket)
	d.mu.Lock()
	for _, m := range d.sandboxes {
		m.sb.Stop()
	}
	d.mu.Unlock()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

func (d *Daemon) gcLoop(ctx context.Context) {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.rt.Enforcer.GC(30 * time.Second)
			d.reapGone()
			d.updateOccupancy()
		}
	}
}

// updateOccupancy publishes each sandbox's allowlist size.
func (d *Daemon) updateOccupancy() {
	counts := d.rt.Enforcer.AllowCounts()
	for _, info := range d.List() {
		d.metrics.SetAllowlistEntries(info.Name, counts[info.CgroupID])
	}
}

func listenControl(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("another daemon is already serving %s", path)
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// Attach attaches a sandbox, or replaces the policy of the sandbox of the
// same name live.
func (d *Daemon) Attach(ctx context.Context, req api.AttachRequest) (api.Info, error) {
	pfile, pol, err := checkAttach(req)
	if err != nil {
		return api.Info{}, err
	}
	t, err := d.attachTarget(req)
	if err != nil {
		return api.Info{}, err
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	for name, m := range d.sandboxes {
		if m.rec.CgroupID == t.id && name != req.Name {
			return api.Info{}, &apiError{http.StatusConflict, fmt.Sprintf("cgroup %s is already attached as sandbox %q: detach it first (sluice detach %s)", t.cgPath, name, name)}
		}
	}
	text, err := d.storeOpaque(req.Name, pol, req.Policy)
	if err != nil {
		return api.Info{}, err
	}
	if m, ok := d.sandboxes[req.Name]; ok {
		return d.replaceLocked(m, req, t, pfile, pol, text)
	}
	return d.startLocked(ctx, req, t, pfile, pol, text)
}

// checkAttach validates an attach request's name, policy and labels, and
// returns the policy and the file name it is reported under.
func checkAttach(req api.AttachRequest) (string, *policy.Policy, error) {
	if !nameRE.MatchString(req.Name) {
		return "", nil, &apiError{http.StatusBadRequest, fmt.Sprintf("invalid sandbox name %q: use letters, digits, '.', '_' and '-' (at most 63)", req.Name)}
	}
	pfile := req.PolicyFile
	if pfile == "" {
		pfile = "policy"
	}
	pol, err := policy.Parse(pfile, []byte(req.Policy))
	if err != nil {
		return "", nil, &apiError{http.StatusBadRequest, err.Error()}
	}
	if err := CheckLabels(req.Labels); err != nil {
		return "", nil, &apiError{http.StatusBadRequest, err.Error()}
	}
	return pfile, pol, nil
}

// target is the cgroup an attach request names, and its network
// namespace ("" the daemon's own).
type target struct {
	cgPath string
	id     uint64
	netns  string
}

// attachTarget finds the cgroup (and network namespace) of the request's
// pid or cgroup path; a cgroup holding the daemon itself is refused.
func (d *Daemon) attachTarget(req api.AttachRequest) (target, error) {
	var t target
	var err error
	switch {
	case req.PID > 0 && req.Cgroup != "":
		return t, &apiError{http.StatusBadRequest, "give either cgroup or pid, not both"}
	case req.PID > 0:
		if t.cgPath, err = cgroup.OfPID(req.PID); err != nil {
			return t, &apiError{http.StatusBadRequest, err.Error()}
		}
		if err := d.checkNotSelf(t.cgPath); err != nil {
			return t, err
		}
		if t.netns, err = netnsOfPID(req.PID); err != nil {
			return t, &apiError{http.StatusBadRequest, err.Error()}
		}
	case req.Cgroup != "":
		if t.cgPath, err = d.cgroupPath(req.Cgroup); err != nil {
			return t, err
		}
		if err := d.checkNotSelf(t.cgPath); err != nil {
			return t, err
		}
		if t.netns, err = netnsOfCgroup(t.cgPath); err != nil {
			return t, &apiError{http.StatusBadRequest, err.Error()}
		}
	default:
		return t, &apiError{http.StatusBadRequest, "give the sandbox's cgroup or pid"}
	}
	if t.id, err = cgroup.ID(t.cgPath); err != nil {
		return t, &apiError{http.StatusBadRequest, err.Error()}
	}
	return t, nil
}

// cgroupPath makes a cgroup path relative to the cgroup2 mount (or the
// configured cgroup root) absolute.
func (d *Daemon) cgroupPath(p string) (string, error) {
	if filepath.IsAbs(p) {
		return p, nil
	}
	root := d.cfg.CgroupRoot
	if root == "" {
		var err error
		if root, err = cgroup.Mount(); err != nil {
			return "", err
		}
	}
	return filepath.Join(root, p), nil
}

// storeOpaque puts the policy's opaque values in the encrypted store and
// returns the policy text without them, which the state dir keeps.
func (d *Daemon) storeOpaque(name string, pol *policy.Policy, policyText string) ([]byte, error) {
	text, opaque, err := splitOpaque(name, pol, []byte(policyText))
	if err != nil {
		return nil, err
	}
	for ref, v := range opaque {
		if err := d.store.PutOpaque(ref, v); err != nil {
			return nil, fmt.Errorf("storing opaque value %s: %w", ref, err)
		}
	}
	return text, nil
}

// replaceLocked replaces the policy (and the labels, when given) of the
// attached sandbox m live; d.mu is held.
func (d *Daemon) replaceLocked(m *managed, req api.AttachRequest, t target, pfile string, pol *policy.Policy, text []byte) (api.Info, error) {
	if m.rec.CgroupID != t.id {
		return api.Info{}, &apiError{http.StatusConflict, fmt.Sprintf("sandbox %q is attached to %s; detach it before reusing the name for %s", req.Name, m.rec.Cgroup, t.cgPath)}
	}
	if err := m.sb.SetPolicy(pol); err != nil {
		return api.Info{}, err
	}
	m.rec.PolicyFile, m.rec.Updated = pfile, time.Now().UTC()
	if req.Labels != nil {
		m.rec.Labels = req.Labels
		m.sb.SetLabels(req.Labels)
	}
	d.logWarnings(req.Name, pol)
	if err := d.savePolicyText(req.Name, text); err != nil {
		return api.Info{}, err
	}
	if err := d.saveRecord(m.rec); err != nil {
		return api.Info{}, err
	}
	d.emitPolicy(m, "policy_replaced")
	return d.info(m), nil
}

// startLocked starts a new sandbox, records it in the state dir and puts
// its CA into the container's trust files; d.mu is held.
func (d *Daemon) startLocked(ctx context.Context, req api.AttachRequest, t target, pfile string, pol *policy.Policy, text []byte) (api.Info, error) {
	ca, _, err := tlsca.LoadOrCreateUnsynced(d.dir.CA(req.Name), req.Name, 30*24*time.Hour)
	if err != nil {
		return api.Info{}, err
	}
	sb, err := d.rt.Start(ctx, Spec{Name: req.Name, CgroupPath: t.cgPath, CgroupID: t.id, Policy: pol, CA: ca, InNetns: inNetns(t.netns), Labels: req.Labels})
	if err != nil {
		if errors.Is(err, enforcer.ErrSandboxTableFull) {
			return api.Info{}, &apiError{http.StatusInsufficientStorage, err.Error()}
		}
		return api.Info{}, err
	}
	d.logWarnings(req.Name, pol)
	now := time.Now().UTC()
	m := &managed{sb: sb, rec: record{Name: req.Name, Cgroup: t.cgPath, CgroupID: t.id, Netns: netnsName(t.netns), PolicyFile: pfile,
		ProxyPort: sb.ProxyPort(), DNSPort: sb.DNSPort(), Created: now, Updated: now, Labels: req.Labels}}
	if err := d.savePolicyText(req.Name, text); err != nil {
		sb.Detach()
		return api.Info{}, err
	}
	if err := d.saveRecord(m.rec); err != nil {
		sb.Detach()
		return api.Info{}, err
	}
	d.sandboxes[req.Name] = m
	d.ssync.kick(d.cfg.StateDir, d.log)
	d.trustContainer(req.Name, req.PID, t.cgPath, req.Rootfs, ca)
	return d.info(m), nil
}

func (d *Daemon) logWarnings(name string, p *policy.Policy) {
	for _, w := range p.Warnings {
		d.log.Warn("policy warning", "sandbox", name, "warning", w.String())
	}
}

// netnsName describes a network namespace path for display: "" is the
// daemon's own (the host's), else net:[inode].
func netnsName(path string) string {
	if path == "" {
		return ""
	}
	ino, err := netnsInode(path)
	if err != nil {
		return path
	}
	return fmt.Sprintf("net:[%d]", ino)
}

func (d *Daemon) emitPolicy(m *managed, what string) {
	d.audit.Emit(audit.Event{Kind: audit.KindSandbox, Sandbox: m.rec.Name, CgroupID: m.rec.CgroupID, Decision: what, Labels: m.sb.Labels()})
}

// savePolicyText keeps the policy (opaque values replaced) for restarts.
func (d *Daemon) savePolicyText(name string, text []byte) error {
	tmp := d.dir.Policy(name) + ".tmp"
	if err := os.WriteFile(tmp, text, 0o600); err != nil {
		return fmt.Errorf("saving sandbox policy: %w", err)
	}
	return os.Rename(tmp, d.dir.Policy(name))
}

// Detach removes a sandbox: kernel side, listeners, state.
func (d *Daemon) Detach(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	m, ok := d.sandboxes[name]
	if !ok {
		return &apiError{http.StatusNotFound, fmt.Sprintf("no sandbox named %q (see sluice list)", name)}
	}
	return d.detachLocked(name, m)
}

// detachLocked detaches m (named name); d.mu is held.
func (d *Daemon) detachLocked(name string, m *managed) error {
	d.untrust(name)
	err := m.sb.Detach()
	delete(d.sandboxes, name)
	d.metrics.ForgetSandbox(name)
	d.dir.RemoveSandbox(name)
	_, _ = d.store.DeleteOpaque(name)
	return err
}

// List describes the attached sandboxes, sorted by name.
func (d *Daemon) List() []api.Info {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]api.Info, 0, len(d.sandboxes))
	for _, m := range d.sandboxes {
		out = append(out, d.info(m))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (d *Daemon) info(m *managed) api.Info {
	p := m.sb.Policy()
	var warnings []string
	for _, w := range p.Warnings {
		warnings = append(warnings, w.String())
	}
	return api.Info{Name: m.rec.Name, Cgroup: m.rec.Cgroup, CgroupID: m.rec.CgroupID, Netns: m.rec.Netns, Policy: m.rec.PolicyFile, Warnings: warnings,
		Mode: p.Mode.String(), Rules: len(p.Rules), ProxyPort: m.sb.ProxyPort(), DNSPort: m.sb.DNSPort(),
		Created: m.rec.Created, Updated: m.rec.Updated, Labels: m.sb.Labels()}
}

func (d *Daemon) saveRecord(r record) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := d.dir.Record(r.Name) + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("saving sandbox state: %w", err)
	}
	return os.Rename(tmp, d.dir.Record(r.Name))
}

// restore re-adopts every sandbox recorded in the state dir whose cgroup
// still exists; the pinned links are updated to this process's programs
// in place, so enforcement has no gap.
func (d *Daemon) restore(ctx context.Context) {
	for _, f := range d.dir.Records() {
		var r record
		data, err := os.ReadFile(f)
		if err == nil {
			err = json.Unmarshal(data, &r)
		}
		if err != nil {
			d.log.Error("unreadable sandbox record; skipped", "file", f, "err", err)
			continue
		}
		if id, err := cgroup.ID(r.Cgroup); err != nil || id != r.CgroupID {
			d.emitGone(r.Name, r.CgroupID, r.Cgroup)
			d.untrust(r.Name)
			d.rt.Enforcer.Sandbox(r.Cgroup, r.CgroupID).Detach()
			os.Remove(f)
			d.dir.RemoveSandbox(r.Name)
			_, _ = d.store.DeleteOpaque(r.Name)
			continue
		}
		text, err := os.ReadFile(d.dir.Policy(r.Name))
		var pol *policy.Policy
		if err == nil {
			pol, err = policy.Parse(r.PolicyFile, text)
		}
		if err == nil {
			err = joinOpaque(r.Name, pol, d.store)
		}
		var ca *tlsca.CA
		if err == nil {
			ca, _, err = tlsca.LoadOrCreate(d.dir.CA(r.Name), r.Name, 30*24*time.Hour)
		}
		var sb *Sandbox
		if err == nil {
			netns, _ := netnsOfCgroup(r.Cgroup)
			sb, err = d.rt.Start(ctx, Spec{Name: r.Name, CgroupPath: r.Cgroup, CgroupID: r.CgroupID, Policy: pol, CA: ca, InNetns: inNetns(netns),
				PreferProxyPort: r.ProxyPort, PreferDNSPort: r.DNSPort, Labels: r.Labels})
		}
		if err != nil {
			// Leave the kernel side as it is: pinned, and with no
			// listener, every connection of the sandbox fails (closed).
			d.log.Error("could not re-adopt sandbox; it stays attached with all traffic refused", "sandbox", r.Name, "err", err)
			continue
		}
		r.ProxyPort, r.DNSPort = sb.ProxyPort(), sb.DNSPort()
		_ = d.saveRecord(r)
		d.mu.Lock()
		d.sandboxes[r.Name] = &managed{sb: sb, rec: r}
		d.mu.Unlock()
		d.log.Info("re-adopted sandbox", "sandbox", r.Name, "cgroup", r.Cgroup)
	}
}

// StateNames reads the sandbox names recorded in the daemon's state
// directory dir (fences included).
func StateNames(dir statedir.Dir) map[uint64]string {
	out := map[uint64]string{}
	for _, f := range dir.Records() {
		var r record
		if data, err := os.ReadFile(f); err == nil && json.Unmarshal(data, &r) == nil {
			out[r.CgroupID] = r.Name
		}
	}
	addFenceNames(dir, out)
	return out
}

// CA returns the PEM certificate of a sandbox's CA.
func (d *Daemon) CA(name string) ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m, ok := d.sandboxes[name]
	if !ok {
		return nil, &apiError{http.StatusNotFound, fmt.Sprintf("no sandbox named %q (see sluice list)", name)}
	}
	return m.sb.CA.CertPEM(), nil
}

// checkNotSelf refuses a cgroup that holds the daemon itself: its upstream
// connections would be refused, and every sandbox's with them.
func (d *Daemon) checkNotSelf(cgPath string) error {
	if self, err := cgroup.Self(); err == nil && isWithin(self, cgPath) {
		return &apiError{http.StatusBadRequest, fmt.Sprintf("cgroup %s contains the sluice daemon itself (%s): attach the sandbox's own cgroup", cgPath, self)}
	}
	return nil
}

// isWithin reports whether path is dir or below it.
func isWithin(path, dir string) bool {
	path, dir = filepath.Clean(path), filepath.Clean(dir)
	return path == dir || strings.HasPrefix(path, dir+"/")
}
