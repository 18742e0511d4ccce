package containers

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Docker resolves containers through the Docker Engine API on its Unix
// socket. It uses the unversioned API path, which the engine serves at its
// own current version, so it keeps working as engines drop old versions.
type Docker struct {
	Socket string
	hc     *http.Client
}

// NewDocker returns a resolver that talks to the engine at socket.
func NewDocker(socket string) *Docker {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}
	return &Docker{Socket: socket, hc: &http.Client{Transport: tr, Timeout: 15 * time.Second}}
}

// dockerInspect is the part of GET /containers/{id}/json sluice reads.
type dockerInspect struct {
	ID    string `json:"Id"`
	Name  string `json:"Name"`
	State struct {
		Status  string `json:"Status"`
		Running bool   `json:"Running"`
		Paused  bool   `json:"Paused"`
		Pid     int    `json:"Pid"`
	} `json:"State"`
}

// Resolve inspects the container (id, unique id prefix or name).
func (d *Docker) Resolve(ctx context.Context, id string) (Target, error) {
	if id == "" || strings.ContainsAny(id, "/?#") {
		return Target{}, fmt.Errorf("invalid container id %q", id)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/containers/"+url.PathEscape(id)+"/json", nil)
	if err != nil {
		return Target{}, err
	}
	resp, err := d.hc.Do(req)
	if err != nil {
		return Target{}, fmt.Errorf("cannot reach the Docker engine at %s (is dockerd running? --docker-socket selects another): %w", d.Socket, unwrapURL(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return Target{}, fmt.Errorf("reading the Docker engine's answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Message string `json:"message"`
		}
		if json.Unmarshal(body, &e) == nil && e.Message != "" {
			return Target{}, fmt.Errorf("docker: %s", e.Message)
		}
		return Target{}, fmt.Errorf("docker: inspecting container %s: %s", id, resp.Status)
	}
	var in dockerInspect
	if err := json.Unmarshal(body, &in); err != nil {
		return Target{}, fmt.Errorf("docker: malformed inspect answer: %w", err)
	}
	t := Target{Runtime: RuntimeDocker, ID: in.ID, Name: strings.TrimPrefix(in.Name, "/")}
	if t.ID == "" {
		t.ID = id
	}
	if !in.State.Running || in.State.Pid <= 0 {
		return Target{}, fmt.Errorf("docker: container %s is %s, not running: start it first", id, orUnknown(in.State.Status))
	}
	if err := fillProcess(&t, in.State.Pid); err != nil {
		return Target{}, err
	}
	return t, nil
}

func orUnknown(s string) string {
	if s == "" {
		return "in an unknown state"
	}
	return s
}

func unwrapURL(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}
