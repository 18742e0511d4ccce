package client

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-dev/sluice/pkg/api"
)

// fakeDaemon serves a fixed control API on a Unix socket and returns its
// path.
func fakeDaemon(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/sandboxes", func(w http.ResponseWriter, r *http.Request) {
		var req api.AttachRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			t.Errorf("decoding attach request: %v", err)
		}
		json.NewEncoder(w).Encode(api.Info{Name: req.Name, Cgroup: req.Cgroup})
	})
	mux.HandleFunc("GET /v1/sandboxes", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode([]api.Info{{Name: "a"}, {Name: "b"}})
	})
	mux.HandleFunc("DELETE /v1/sandboxes/{name}", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNotFound)
		json.NewEncoder(w).Encode(api.Error{Error: "no sandbox named " + r.PathValue("name")})
	})
	mux.HandleFunc("GET /v1/sandboxes/{name}/ca", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("PEM of " + r.PathValue("name")))
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestClientRoundTrips(t *testing.T) {
	t.Parallel()
	c := New(fakeDaemon(t))
	ctx := context.Background()
	info, err := c.Attach(ctx, api.AttachRequest{Name: "x", Cgroup: "/cg"})
	if err != nil || info.Name != "x" || info.Cgroup != "/cg" {
		t.Errorf("Attach = %+v, %v", info, err)
	}
	infos, err := c.List(ctx)
	if err != nil || len(infos) != 2 || infos[1].Name != "b" {
		t.Errorf("List = %+v, %v", infos, err)
	}
	pem, err := c.CA(ctx, "x")
	if err != nil || string(pem) != "PEM of x" {
		t.Errorf("CA = %q, %v", pem, err)
	}
	// The daemon's error message is the error.
	if err := c.Detach(ctx, "gone"); err == nil || err.Error() != "no sandbox named gone" {
		t.Errorf("Detach error = %v, want the daemon's message", err)
	}
	pods := PodSandboxes{Client: c}
	if names, err := pods.List(ctx); err != nil || strings.Join(names, ",") != "a,b" {
		t.Errorf("PodSandboxes.List = %v, %v", names, err)
	}
}

func TestClientNoDaemon(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "none.sock")
	_, err := New(sock).List(context.Background())
	if err == nil || !strings.Contains(err.Error(), "cannot reach the sluice daemon at "+sock) {
		t.Errorf("List without a daemon: %v", err)
	}
	if !NoDaemon(err) {
		t.Errorf("NoDaemon(%v) = false, want true (no socket)", err)
	}
}
