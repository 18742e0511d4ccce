package kube

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/containers"
)

// syncDaemon is a fakeDaemon safe for use from Run's goroutine.
type syncDaemon struct {
	mu      sync.Mutex
	calls   []string
	initial []string
	once    sync.Once
	listed  chan struct{} // closed by the first List
}

func (d *syncDaemon) Attach(_ context.Context, name, cg, _ string, _ []byte, _ map[string]string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, "attach "+name+" "+filepath.Base(cg))
	return nil
}
func (d *syncDaemon) Detach(_ context.Context, name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, "detach "+name)
	return nil
}
func (d *syncDaemon) List(context.Context) ([]string, error) {
	d.once.Do(func() { close(d.listed) })
	return d.initial, nil
}
func (d *syncDaemon) snapshot() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.calls...)
}

// TestRun drives the whole loop: list, sync against the daemon's
// sandboxes, watch the recorded events, apply through the resolver.
func TestRun(t *testing.T) {
	events, err := os.ReadFile(eventsFile)
	if err != nil {
		t.Fatal(err)
	}
	d := &syncDaemon{initial: []string{"k8s.stale.pod", "manual"}, listed: make(chan struct{})}
	srv, files, _ := fakeAPIServer(t, "tok", func(rv string) (int, string) {
		if rv != "200" {
			// After the recorded stream, keep later watches open and empty.
			time.Sleep(200 * time.Millisecond)
			return http.StatusOK, ""
		}
		// The recorded stream follows the first sync (as on a quiet
		// cluster), so the golden order of calls is deterministic.
		select {
		case <-d.listed:
		case <-time.After(10 * time.Second):
		}
		return http.StatusOK, string(events)
	})
	c := newTestClient(t, srv, files)
	dir := t.TempDir()
	for _, p := range []string{"agent.yaml", "agent-strict.yaml", "build.yaml"} {
		os.WriteFile(filepath.Join(dir, p), []byte("version: 1\nrules: []\n"), 0o644)
	}
	res := fakeResolver{}
	uids := map[string]string{"1": "aaaaaaaa-1111-4111-8111-aaaaaaaaaaaa", "2": "aaaaaaaa-1111-4111-8111-aaaaaaaaaaaa",
		"3": "bbbbbbbb-2222-4222-8222-bbbbbbbbbbbb", "5": "dddddddd-4444-4444-8444-dddddddddddd", "6": "eeeeeeee-5555-4555-8555-eeeeeeeeeeee"}
	for ch, uid := range uids {
		id := strings.Repeat(ch, 64)
		res[id] = containers.Target{PID: 1, Cgroup: "/sys/fs/cgroup/kubepods/pod" + uid + "/" + id}
	}
	ap := &Applier{Daemon: d, Resolvers: map[string]containers.Resolver{"containerd": res}, PolicyDirs: []string{dir}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		Run(ctx, c, "node-a", ap, slog.New(slog.NewTextHandler(io.Discard, nil)))
		close(done)
	}()
	want := []string{
		// sync: the listed running agent pod, the stale sandbox
		"attach k8s.sandboxes.agent-7f9c podaaaaaaaa-1111-4111-8111-aaaaaaaaaaaa",
		"detach k8s.stale.pod",
		// the recorded stream
		"attach k8s.sandboxes.agent-7f9c podaaaaaaaa-1111-4111-8111-aaaaaaaaaaaa", // policy agent-strict
		"attach k8s.build-x1 poddddddddd-4444-4444-8444-dddddddddddd",
		"detach k8s.build-x1",
		"attach k8s.default.web-5d8b podbbbbbbbb-2222-4222-8222-bbbbbbbbbbbb",
		"detach k8s.default.web-5d8b",
		"detach k8s.sandboxes.agent-7f9c",
		"attach k8s.sandboxes.agent-9zz podeeeeeeee-5555-4555-8555-eeeeeeeeeeee",
		"detach k8s.sandboxes.agent-9zz",
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(d.snapshot()) < len(want) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-done
	got := d.snapshot()
	if len(got) < len(want) || strings.Join(got[:len(want)], "\n") != strings.Join(want, "\n") {
		t.Fatalf("daemon calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
