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

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/cgroup"
	"github.com/sluice-dev/sluice/pkg/enforcer"
	"github.com/sluice-dev/sluice/pkg/policy"
	"github.com/sluice-dev/sluice/pkg/secrets"
	"github.com/sluice-dev/sluice/pkg/tlsca"
)

// Daemon is the long-running host agent: many sandboxes, a control API on a
// Unix socket, state that survives restarts. Create it with New and call
// Run once.
type Daemon struct {
	cfg     Config
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
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "sandboxes"), 0o700); err != nil {
		return nil, fmt.Errorf("creating state dir: %w", err)
	}
	store, err := secrets.OpenStore(cfg.StateDir, secrets.KeySource{File: cfg.SecretKeyFile}, log.With("component", "secrets"))
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
	signer, err := secrets.LoadOrCreateSigningKey(cfg.StateDir)
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

	resolver, px, err := newResolverAndProxy(cfg.DNSUpstreams, cfg.DNSAllowLoopback, cfg.UpstreamCAs, log)
	if err != nil {
		return nil, err
	}
	enf, err := enforcer.Open(enforcer.Config{PinDir: cfg.PinDir}, log.With("component", "enforcer"))
	if err != nil {
		return nil, err
	}
	d := &Daemon{
		cfg: cfg, log: log, store: store, audit: alog, bcast: bcast, metrics: metrics,
		sandboxes: map[string]*managed{},
		rt: &Runtime{
			Log: log, Enforcer: enf, Resolver: resolver, Proxy: px,
			Secrets:   chain,
			Callbacks: secrets.NewCallbacks(signer, nil, log.With("component", "callback")),
			Audit:     alog,
		},
	}
	if err := d.rt.setCredentials(chain, store, cfg.UpstreamCAs); err != nil {
		return nil, err
	}
	return d, nil
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
	srv := &http.Server{Handler: d.api(), ConnContext: withPeerCred, ReadHeaderTimeout: 10 * time.Second}
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

// AttachRequest is the body of POST /v1/sandboxes.
type AttachRequest struct {
	Name       string `json:"name"`
	Cgroup     string `json:"cgroup,omitempty"`
	PID        int    `json:"pid,omitempty"`
	PolicyFile string `json:"policy_file"` // for messages
	Policy     string `json:"policy"`      // YAML text
	// Labels (`--label k=v`) replace the sandbox's labels; nil keeps those
	// of a sandbox being re-attached.
	Labels map[string]string `json:"labels,omitempty"`
	// Rootfs is the container's root file system in its mount namespace,
	// from an OCI hook that runs before pivot_root (see trust.go).
	Rootfs string `json:"rootfs,omitempty"`
}

// Info describes an attached sandbox in API answers.
type Info struct {
	Name      string    `json:"name"`
	Cgroup    string    `json:"cgroup"`
	CgroupID  uint64    `json:"cgroup_id"`
	Netns     string    `json:"netns,omitempty"`
	Policy    string    `json:"policy_file"`
	Mode      string    `json:"mode"`
	Rules     int       `json:"rules"`
	ProxyPort uint16    `json:"proxy_port"`
	DNSPort   uint16    `json:"dns_port"`
	Created   time.Time `json:"created"`
	Updated   time.Time `json:"updated"`
	// Warnings are the policy's warnings (file:line:col: field: message).
	Warnings []string `json:"warnings,omitempty"`
	// Labels are the sandbox's labels (`--label k=v`, pod labels).
	Labels map[string]string `json:"labels,omitempty"`
	// RunPID is the process of a `sluice run` sandbox (ListRuns); 0 for
	// the daemon's sandboxes.
	RunPID int `json:"run_pid,omitempty"`
}

// Attach attaches a sandbox, or replaces the policy of the sandbox of the
// same name live.
func (d *Daemon) Attach(ctx context.Context, req AttachRequest) (Info, error) {
	if !nameRE.MatchString(req.Name) {
		return Info{}, &apiError{http.StatusBadRequest, fmt.Sprintf("invalid sandbox name %q: use letters, digits, '.', '_' and '-' (at most 63)", req.Name)}
	}
	pfile := req.PolicyFile
	if pfile == "" {
		pfile = "policy"
	}
	pol, err := policy.Parse(pfile, []byte(req.Policy))
	if err != nil {
		return Info{}, &apiError{http.StatusBadRequest, err.Error()}
	}
	if err := CheckLabels(req.Labels); err != nil {
		return Info{}, &apiError{http.StatusBadRequest, err.Error()}
	}
	cgPath := req.Cgroup
	netns := ""
	switch {
	case req.PID > 0 && cgPath != "":
		return Info{}, &apiError{http.StatusBadRequest, "give either cgroup or pid, not both"}
	case req.PID > 0:
		if cgPath, err = cgroup.OfPID(req.PID); err != nil {
			return Info{}, &apiError{http.StatusBadRequest, err.Error()}
		}
		if err := d.checkNotSelf(cgPath); err != nil {
			return Info{}, err
		}
		if netns, err = netnsOfPID(req.PID); err != nil {
			return Info{}, &apiError{http.StatusBadRequest, err.Error()}
		}
	case cgPath != "":
		if !filepath.IsAbs(cgPath) {
			root := d.cfg.CgroupRoot
			if root == "" {
				if root, err = cgroup.Mount(); err != nil {
					return Info{}, err
				}
			}
			cgPath = filepath.Join(root, cgPath)
		}
		if err := d.checkNotSelf(cgPath); err != nil {
			return Info{}, err
		}
		if netns, err = netnsOfCgroup(cgPath); err != nil {
			return Info{}, &apiError{http.StatusBadRequest, err.Error()}
		}
	default:
		return Info{}, &apiError{http.StatusBadRequest, "give the sandbox's cgroup or pid"}
	}
	id, err := cgroup.ID(cgPath)
	if err != nil {
		return Info{}, &apiError{http.StatusBadRequest, err.Error()}
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	for name, m := range d.sandboxes {
		if m.rec.CgroupID == id && name != req.Name {
			return Info{}, &apiError{http.StatusConflict, fmt.Sprintf("cgroup %s is already attached as sandbox %q: detach it first (sluice detach %s)", cgPath, name, name)}
		}
	}
	// The state dir keeps the policy text; opaque values go to the
	// encrypted store only.
	text, opaque, err := splitOpaque(req.Name, pol, []byte(req.Policy))
	if err != nil {
		return Info{}, err
	}
	for ref, v := range opaque {
		if err := d.store.PutOpaque(ref, v); err != nil {
			return Info{}, fmt.Errorf("storing opaque value %s: %w", ref, err)
		}
	}
	now := time.Now().UTC()
	if m, ok := d.sandboxes[req.Name]; ok {
		if m.rec.CgroupID != id {
			return Info{}, &apiError{http.StatusConflict, fmt.Sprintf("sandbox %q is attached to %s; detach it before reusing the name for %s", req.Name, m.rec.Cgroup, cgPath)}
		}
		if err := m.sb.SetPolicy(pol); err != nil {
			return Info{}, err
		}
		m.rec.PolicyFile, m.rec.Updated = pfile, now
		if req.Labels != nil {
			m.rec.Labels = req.Labels
			m.sb.SetLabels(req.Labels)
		}
		d.logWarnings(req.Name, pol)
		if err := d.savePolicyText(req.Name, text); err != nil {
			return Info{}, err
		}
		if err := d.saveRecord(m.rec); err != nil {
			return Info{}, err
		}
		d.emitPolicy(m, "policy_replaced")
		return d.info(m), nil
	}
	ca, _, err := tlsca.LoadOrCreateUnsynced(filepath.Join(d.cfg.StateDir, "sandboxes", req.Name+".ca"), req.Name, 30*24*time.Hour)
	if err != nil {
		return Info{}, err
	}
	sb, err := d.rt.Start(ctx, Spec{Name: req.Name, CgroupPath: cgPath, CgroupID: id, Policy: pol, CA: ca, InNetns: inNetns(netns), Labels: req.Labels})
	if err != nil {
		if errors.Is(err, enforcer.ErrSandboxTableFull) {
			return Info{}, &apiError{http.StatusInsufficientStorage, err.Error()}
		}
		return Info{}, err
	}
	d.logWarnings(req.Name, pol)
	m := &managed{sb: sb, rec: record{Name: req.Name, Cgroup: cgPath, CgroupID: id, Netns: netnsName(netns), PolicyFile: pfile,
		ProxyPort: sb.ProxyPort(), DNSPort: sb.DNSPort(), Created: now, Updated: now, Labels: req.Labels}}
	if err := d.savePolicyText(req.Name, text); err != nil {
		sb.Detach()
		return Info{}, err
	}
	if err := d.saveRecord(m.rec); err != nil {
		sb.Detach()
		return Info{}, err
	}
	d.sandboxes[req.Name] = m
	d.ssync.kick(d.cfg.StateDir, d.log)
	d.trustContainer(req.Name, req.PID, cgPath, req.Rootfs, ca)
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

func (d *Daemon) policyPath(name string) string {
	return filepath.Join(d.cfg.StateDir, "sandboxes", name+".policy.yaml")
}

// savePolicyText keeps the policy (opaque values replaced) for restarts.
func (d *Daemon) savePolicyText(name string, text []byte) error {
	tmp := d.policyPath(name) + ".tmp"
	if err := os.WriteFile(tmp, text, 0o600); err != nil {
		return fmt.Errorf("saving sandbox policy: %w", err)
	}
	return os.Rename(tmp, d.policyPath(name))
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
	os.Remove(d.recordPath(name))
	os.Remove(d.policyPath(name))
	os.RemoveAll(filepath.Join(d.cfg.StateDir, "sandboxes", name+".ca"))
	_, _ = d.store.DeleteOpaque(name)
	return err
}

// List describes the attached sandboxes, sorted by name.
func (d *Daemon) List() []Info {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]Info, 0, len(d.sandboxes))
	for _, m := range d.sandboxes {
		out = append(out, d.info(m))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (d *Daemon) info(m *managed) Info {
	p := m.sb.Policy()
	var warnings []string
	for _, w := range p.Warnings {
		warnings = append(warnings, w.String())
	}
	return Info{Name: m.rec.Name, Cgroup: m.rec.Cgroup, CgroupID: m.rec.CgroupID, Netns: m.rec.Netns, Policy: m.rec.PolicyFile, Warnings: warnings,
		Mode: p.Mode.String(), Rules: len(p.Rules), ProxyPort: m.sb.ProxyPort(), DNSPort: m.sb.DNSPort(),
		Created: m.rec.Created, Updated: m.rec.Updated, Labels: m.sb.Labels()}
}

func (d *Daemon) recordPath(name string) string {
	return filepath.Join(d.cfg.StateDir, "sandboxes", name+".json")
}

func (d *Daemon) saveRecord(r record) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := d.recordPath(r.Name) + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("saving sandbox state: %w", err)
	}
	return os.Rename(tmp, d.recordPath(r.Name))
}

// restore re-adopts every sandbox recorded in the state dir whose cgroup
// still exists; the pinned links are updated to this process's programs
// in place, so enforcement has no gap.
func (d *Daemon) restore(ctx context.Context) {
	files, _ := filepath.Glob(filepath.Join(d.cfg.StateDir, "sandboxes", "*.json"))
	for _, f := range files {
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
			os.Remove(d.policyPath(r.Name))
			os.RemoveAll(filepath.Join(d.cfg.StateDir, "sandboxes", r.Name+".ca"))
			_, _ = d.store.DeleteOpaque(r.Name)
			continue
		}
		text, err := os.ReadFile(d.policyPath(r.Name))
		var pol *policy.Policy
		if err == nil {
			pol, err = policy.Parse(r.PolicyFile, text)
		}
		if err == nil {
			err = joinOpaque(r.Name, pol, d.store)
		}
		var ca *tlsca.CA
		if err == nil {
			ca, _, err = tlsca.LoadOrCreate(filepath.Join(d.cfg.StateDir, "sandboxes", r.Name+".ca"), r.Name, 30*24*time.Hour)
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

// stateNames reads the sandbox names recorded in the daemon's state dir.
func stateNames(stateDir string) map[uint64]string {
	out := map[uint64]string{}
	files, _ := filepath.Glob(filepath.Join(stateDir, "sandboxes", "*.json"))
	for _, f := range files {
		var r record
		if data, err := os.ReadFile(f); err == nil && json.Unmarshal(data, &r) == nil {
			out[r.CgroupID] = r.Name
		}
	}
	addFenceNames(stateDir, out)
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
