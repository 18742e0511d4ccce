package proxy

import (
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sluice-dev/sluice/pkg/audit"
)

// TestProcessesRule: a processes: rule applies only to connections opened
// by a matching executable (resolved from the kernel-recorded pid); the
// refusal names the process, and the upstream receives nothing.
func TestProcessesRule(t *testing.T) {
	t.Parallel()
	var hits atomic.Int64
	up := newUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		fmt.Fprint(w, "hello")
	}))
	dst := addrPort(t, up.URL)
	var exe atomic.Value
	e := newEnv(t, fmt.Sprintf(`
version: 1
rules:
  - name: git-host
    hosts: [git.test]
    ports: [%d]
    processes: [git]
  - name: api
    hosts: [api.test]
    paths: ["/v1/*"]
    processes: [/usr/bin/python3]
`, dst.Port()), func(e *env, c *Config) {
		c.Exe = func(pid uint32) (string, error) {
			if pid != 42 {
				return "", fmt.Errorf("unexpected pid %d", pid)
			}
			return exe.Load().(string), nil
		}
	})
	e.bind("git.test", dst)
	e.bind("api.test", dst)
	tests := []struct {
		exe, url string
		want     int
	}{
		{"/usr/bin/git", "https://git.test:%d/repo.git/info/refs", 200},
		{"/usr/lib/git-core/git-remote-http", "https://git.test:%d/repo.git/info/refs", 200},
		{"/usr/bin/curl", "https://git.test:%d/repo.git/info/refs", 403},
		{"/tmp/not-git", "https://git.test:%d/", 403},
		{"", "https://git.test:%d/", 403},
		{"/usr/bin/python3", "https://api.test:%d/v1/x", 200},
		{"/usr/local/bin/python3", "https://api.test:%d/v1/x", 403},
		{"/usr/bin/git", "https://api.test:%d/v1/x", 403},
	}
	for _, h2 := range []bool{false, true} {
		for _, tt := range tests {
			t.Run(fmt.Sprintf("h2=%v/%s", h2, tt.exe), func(t *testing.T) {
				exe.Store(tt.exe)
				tr := e.transport(h2)
				tr.DisableKeepAlives = true
				// git.test is spliced: the client sees the upstream's own
				// certificate.
				roots := e.sandbox.Clone()
				roots.AppendCertsFromPEM(upstreamCA.CertPEM())
				tr.TLSClientConfig.RootCAs = roots
				defer tr.CloseIdleConnections()
				before := hits.Load()
				resp, err := (&http.Client{Transport: tr}).Get(fmt.Sprintf(tt.url, dst.Port()))
				if err != nil {
					t.Fatal(err)
				}
				body := readAll(t, resp)
				if resp.StatusCode != tt.want {
					t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.want, body)
				}
				if tt.want == 403 {
					name := tt.exe
					if name == "" {
						name = "an unknown executable"
					}
					if !strings.Contains(body, "process "+name) || hits.Load() != before {
						t.Fatalf("refusal does not name the process %q, or the upstream was reached: %s", name, body)
					}
				}
			})
		}
	}
	// The events carry the executable.
	for _, ev := range e.rec.waitKind(t, audit.KindConn, 2*len(tests)) {
		if ev.Exe == "" && ev.Decision != audit.DecisionDeny {
			t.Fatalf("conn event without exe: %+v", ev)
		}
	}
}

func TestProcExe(t *testing.T) {
	t.Parallel()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	got, err := procExe(uint32(os.Getpid()))
	if err != nil || got != self {
		t.Fatalf("procExe(self) = %q, %v; want %q", got, err, self)
	}
	if got, err := procExe(0); err == nil {
		t.Fatalf("procExe(0) = %q", got)
	}
}
