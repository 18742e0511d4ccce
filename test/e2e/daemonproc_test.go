package e2e

import (
	"encoding/json"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/testutil"
)

// daemonProc is a private `sluice daemon` for one test: its own socket,
// state directory and audit file in the world's directory, the world's pin
// directory, DNS and upstream CA. Tests with their own daemonProc are
// independent of each other. startDaemon and tryStartDaemon are the only
// places that run `sluice daemon`.
type daemonProc struct {
	t       *testing.T
	w       *world
	opts    daemonOpts
	socket  string
	state   string
	audit   string // the --audit file
	metrics string // the --metrics address, when opts.metrics
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd has exited
	log     *syncBuffer
}

// daemonOpts are what a test's daemon differs by; the zero value is the
// world's daemon with an audit file.
type daemonOpts struct {
	name    string   // socket NAME.sock, state NAME-state, audit NAME-audit.jsonl (default "sluice")
	state   string   // --state-dir (default WORLD/NAME-state)
	pinDir  string   // --pin-dir (default the world's)
	audit   string   // --audit (default WORLD/NAME-audit.jsonl)
	metrics bool     // serve --metrics on a free loopback port and wait for it
	nofile  int      // RLIMIT_NOFILE, soft and hard (0: inherited)
	private bool     // in its own mount namespace with the host's /sys/fs/bpf unmounted
	extra   []string // more flags
}

// syncBuffer is the shared test buffer for a writer goroutine and a reader.
type syncBuffer = testutil.SyncBuffer

// startDaemon starts a daemon that must come up, and stops it (after
// detaching what is left) when the test ends.
func startDaemon(t *testing.T, w *world, o daemonOpts) *daemonProc {
	t.Helper()
	d, out, up := tryStartDaemon(t, w, o)
	if !up {
		t.Fatalf("daemon exited at start:\n%s", out)
	}
	return d
}

// tryStartDaemon starts a daemon and reports whether it came up; when it
// exited instead, it returns its output. A daemon that came up is stopped
// (after detaching what is left) when the test ends.
func tryStartDaemon(t *testing.T, w *world, o daemonOpts) (d *daemonProc, out string, up bool) {
	t.Helper()
	if o.name == "" {
		o.name = "sluice"
	}
	if o.state == "" {
		o.state = filepath.Join(w.dir, o.name+"-state")
	}
	if o.pinDir == "" {
		o.pinDir = w.pin
	}
	if o.audit == "" {
		o.audit = filepath.Join(w.dir, o.name+"-audit.jsonl")
	}
	d = &daemonProc{t: t, w: w, opts: o, audit: o.audit, state: o.state,
		socket: filepath.Join(w.dir, o.name+".sock")}
	if o.metrics {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		d.metrics = ln.Addr().String()
		ln.Close()
	}
	if !d.startOrExit() {
		return nil, d.log.String(), false
	}
	t.Cleanup(func() {
		for _, name := range d.names() {
			d.cli("detach", name)
		}
		d.stop()
		if t.Failed() {
			t.Logf("daemon %s log:\n%s", o.name, d.log)
		}
	})
	return d, "", true
}

// start restarts the daemon (after stop or kill9) and waits until its
// socket (and metrics) answer.
func (d *daemonProc) start() {
	d.t.Helper()
	if !d.startOrExit() {
		d.t.Fatalf("daemon exited at restart:\n%s", d.log)
	}
}

// startOrExit starts the daemon and waits until it answers (true) or has
// exited (false).
func (d *daemonProc) startOrExit() bool {
	d.t.Helper()
	d.log = &syncBuffer{}
	args := []string{"daemon", "--socket", d.socket, "--state-dir", d.state,
		"--pin-dir", d.opts.pinDir, "--dns-upstream", d.w.dns.Addr, "--dns-allow-loopback",
		"--upstream-ca", d.w.api.CAFile, "--audit", d.audit}
	if d.metrics != "" {
		args = append(args, "--metrics", d.metrics)
	}
	argv := append([]string{sluiceBin(d.t)}, append(args, d.opts.extra...)...)
	if n := d.opts.nofile; n > 0 {
		argv = append([]string{"sh", "-c", `ulimit -n $0 && ulimit -Hn $0 && exec "$@"`, strconv.Itoa(n)}, argv...)
	}
	if d.opts.private {
		argv = append([]string{"unshare", "-m", "--propagation", "private",
			"sh", "-c", `umount -l /sys/fs/bpf 2>/dev/null; exec "$@"`, "sh"}, argv...)
	}
	d.cmd = exec.Command(argv[0], argv[1:]...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	exited := make(chan struct{})
	d.exited = exited
	go func(cmd *exec.Cmd) { _ = cmd.Wait(); close(exited) }(d.cmd)
	deadline := time.Now().Add(testutil.WaitTimeout)
	for !d.up() {
		select {
		case <-exited:
			d.cmd = nil
			return false
		default:
		}
		if time.Now().After(deadline) {
			d.kill9()
			d.t.Fatalf("daemon neither came up nor exited in %v:\n%s", testutil.WaitTimeout, d.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// up reports whether the control socket (and the metrics listener) answer.
func (d *daemonProc) up() bool {
	c, err := net.Dial("unix", d.socket)
	if err != nil {
		return false
	}
	c.Close()
	if d.metrics == "" {
		return true
	}
	resp, err := http.Get("http://" + d.metrics + "/metrics")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return true
}

// pid is the daemon's process id (with opts.nofile or opts.private, the
// shell's exec keeps it).
func (d *daemonProc) pid() int { return d.cmd.Process.Pid }

func (d *daemonProc) kill9() {
	if d.cmd == nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.exited
	d.cmd = nil
}

func (d *daemonProc) stop() {
	if d.cmd == nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
	d.cmd = nil
}

// cli runs a sluice client command against the daemon.
func (d *daemonProc) cli(args ...string) (string, error) {
	cmd := exec.Command(sluiceBin(d.t), append(args, "--socket", d.socket)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// names lists the daemon's own sandboxes. `sluice list` also shows every
// `sluice run` on the host (RunPID set), which belong to other tests.
func (d *daemonProc) names() []string {
	out, err := d.cli("list", "--json")
	if err != nil {
		return nil
	}
	var infos []struct {
		Name   string
		RunPID int `json:"run_pid"`
	}
	_ = json.Unmarshal([]byte(out), &infos)
	var names []string
	for _, i := range infos {
		if i.RunPID == 0 {
			names = append(names, i.Name)
		}
	}
	return names
}

// blockedRow is one row of `sluice blocked --json`.
type blockedRow struct {
	Sandbox  string    `json:"sandbox"`
	CgroupID uint64    `json:"cgroup_id"`
	Dst      string    `json:"dst"`
	Port     uint16    `json:"port"`
	Proto    string    `json:"proto"`
	Reason   string    `json:"reason"`
	Count    uint64    `json:"count"`
	LastSeen time.Time `json:"last_seen"`
}
