package doctor

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func fakeEnv(mountinfo, status string) Env {
	return Env{
		MountInfo:     filepath.Join("testdata", mountinfo),
		ProcStatus:    filepath.Join("testdata", status),
		KernelRelease: func() (string, error) { return "6.18.44-generic", nil },
		BPFProbe:      func() error { return nil },
		SpliceProbe:   func() error { return nil },
	}
}

func find(rep Report, check string) Result {
	for _, r := range rep.Results {
		if r.Check == check {
			return r
		}
	}
	return Result{}
}

func TestRun(t *testing.T) {
	tests := []struct {
		name      string
		env       Env
		wantOK    bool
		wantMode  string
		check     string
		status    Status
		detail    string
		fix       string
		mountAt   string
		socketSet bool
	}{
		{name: "hybrid host", env: fakeEnv("mountinfo-hybrid", "status-root"), wantOK: true, wantMode: "hybrid",
			check: "cgroup v2", status: OK, detail: "hybrid mode: cgroup2 at /sys/fs/cgroup/unified beside 3 cgroup v1 hierarchies", mountAt: "/sys/fs/cgroup/unified"},
		{name: "unified host", env: fakeEnv("mountinfo-unified", "status-root"), wantOK: true, wantMode: "unified",
			check: "cgroup v2", status: OK, detail: "unified mode: cgroup2 at /sys/fs/cgroup", mountAt: "/sys/fs/cgroup"},
		{name: "legacy host", env: fakeEnv("mountinfo-legacy", "status-root"), wantMode: "legacy",
			check: "cgroup v2", status: Fail, detail: "legacy mode", fix: "systemd.unified_cgroup_hierarchy=1"},
		{name: "missing bpffs", env: fakeEnv("mountinfo-hybrid-no-bpffs", "status-root"), wantMode: "hybrid",
			check: "bpffs", status: Fail, detail: "no bpf filesystem at /sys/fs/bpf", fix: "mount -t bpf bpffs /sys/fs/bpf"},
		{name: "bpffs elsewhere", env: func() Env { e := fakeEnv("mountinfo-hybrid", "status-root"); e.BPFFS = "/run/bpf"; return e }(), wantMode: "hybrid",
			check: "bpffs", status: Fail, fix: "mount -t bpf bpffs /run/bpf"},
		{name: "no capabilities", env: fakeEnv("mountinfo-hybrid", "status-user"), wantMode: "hybrid",
			check: "capabilities", status: Fail, detail: "missing CAP_BPF", fix: "AmbientCapabilities"},
		{name: "old kernel", env: func() Env {
			e := fakeEnv("mountinfo-unified", "status-root")
			e.KernelRelease = func() (string, error) { return "5.4.0-150-generic", nil }
			return e
		}(), wantMode: "unified", check: "kernel", status: Fail, detail: "older than 5.8", fix: "upgrade"},
		{name: "5.8 is enough", env: func() Env {
			e := fakeEnv("mountinfo-unified", "status-root")
			e.KernelRelease = func() (string, error) { return "5.8.0", nil }
			return e
		}(), wantOK: true, wantMode: "unified", check: "kernel", status: OK},
		{name: "bpf refused", env: func() Env {
			e := fakeEnv("mountinfo-unified", "status-root")
			e.BPFProbe = func() error { return unix.EPERM }
			return e
		}(), wantMode: "unified", check: "bpf syscall", status: Fail, fix: "seccomp"},
		{name: "bpf missing", env: func() Env {
			e := fakeEnv("mountinfo-unified", "status-root")
			e.BPFProbe = func() error { return unix.ENOSYS }
			return e
		}(), wantMode: "unified", check: "bpf syscall", status: Fail, fix: "CONFIG_BPF_SYSCALL"},
		{name: "daemon not running is a warning", env: func() Env {
			e := fakeEnv("mountinfo-unified", "status-root")
			e.Socket = "/nonexistent/sluice.sock"
			return e
		}(), wantOK: true, wantMode: "unified", check: "daemon", status: Warn, fix: "systemctl start sluice"},
		{name: "strict fails on warnings", env: func() Env {
			e := fakeEnv("mountinfo-unified", "status-root")
			e.Socket, e.Strict = "/nonexistent/sluice.sock", true
			return e
		}(), wantMode: "unified", check: "daemon", status: Warn},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep := Run(context.Background(), tt.env)
			if rep.OK != tt.wantOK || rep.CgroupMode != tt.wantMode {
				t.Fatalf("ok=%v mode=%q, want ok=%v mode=%q: %+v", rep.OK, rep.CgroupMode, tt.wantOK, tt.wantMode, rep.Results)
			}
			if tt.mountAt != "" && rep.CgroupMount != tt.mountAt {
				t.Fatalf("mount %q, want %q", rep.CgroupMount, tt.mountAt)
			}
			r := find(rep, tt.check)
			if r.Status != tt.status || !strings.Contains(r.Detail, tt.detail) || !strings.Contains(r.Fix, tt.fix) {
				t.Fatalf("%s = %+v, want status %s detail ~%q fix ~%q", tt.check, r, tt.status, tt.detail, tt.fix)
			}
			if r.Status == Fail && r.Fix == "" {
				t.Fatalf("a failed check without a fix: %+v", r)
			}
		})
	}
}

func TestSkip(t *testing.T) {
	e := fakeEnv("mountinfo-hybrid-no-bpffs", "status-root")
	e.Socket, e.Daemon = "/nonexistent", func(context.Context) error { t.Fatal("daemon probed although skipped"); return nil }
	e.Skip = []string{"bpffs", "daemon"}
	rep := Run(context.Background(), e)
	if !rep.OK || len(rep.Results) != len(Checks)-2 || find(rep, "bpffs").Check != "" {
		t.Fatalf("skip: %+v", rep)
	}
}

func TestDaemonProbe(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	notSock := filepath.Join(dir, "file")
	os.WriteFile(notSock, nil, 0o600)
	tests := []struct {
		name   string
		socket string
		probe  func(context.Context) error
		status Status
		detail string
	}{
		{name: "answers", socket: sock, probe: func(context.Context) error { return nil }, status: OK, detail: "answers"},
		{name: "does not answer", socket: sock, probe: func(context.Context) error { return errors.New("connection refused") }, status: Fail, detail: "connection refused"},
		{name: "not a socket", socket: notSock, status: Fail, detail: "not a socket"},
		{name: "no probe", socket: sock, status: OK, detail: "exists"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := fakeEnv("mountinfo-unified", "status-root")
			e.Socket, e.Daemon = tt.socket, tt.probe
			r := find(Run(context.Background(), e), "daemon")
			if r.Status != tt.status || !strings.Contains(r.Detail, tt.detail) {
				t.Fatalf("daemon = %+v", r)
			}
		})
	}
}

// TestThisHost runs the real checks on the machine the tests run on.
func TestThisHost(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for the bpf probe and capabilities")
	}
	rep := Run(context.Background(), Env{})
	for _, r := range rep.Results {
		t.Logf("%-13s %-4s %s", r.Check, r.Status, r.Detail)
	}
	if !rep.OK {
		t.Fatalf("doctor fails on this host: %+v", rep.Results)
	}
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), "/sys/fs/cgroup/unified ") && strings.Contains(string(data), " - cgroup cgroup ") {
		if rep.CgroupMode != "hybrid" || rep.CgroupMount != "/sys/fs/cgroup/unified" {
			t.Fatalf("this host is hybrid (cgroup2 at /sys/fs/cgroup/unified); doctor says %s at %s", rep.CgroupMode, rep.CgroupMount)
		}
	}
}

func TestParseRelease(t *testing.T) {
	for in, want := range map[string][2]int{"6.18.44-fc-v595": {6, 18}, "5.8.0": {5, 8}, "5.10-rc1": {5, 10}, "4.19.0+": {4, 19}} {
		maj, min, ok := parseRelease(in)
		if !ok || maj != want[0] || min != want[1] {
			t.Errorf("parseRelease(%q) = %d.%d %v", in, maj, min, ok)
		}
	}
	if _, _, ok := parseRelease("garbage"); ok {
		t.Error("parsed garbage")
	}
}
