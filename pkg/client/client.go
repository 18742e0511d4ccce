package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"

	"github.com/sluice-dev/sluice/pkg/api"
	"github.com/sluice-dev/sluice/pkg/audit"
)

// Client talks to a daemon's control socket.
type Client struct {
	Socket string
	hc     *http.Client
}

// New returns a client for the socket at path.
func New(path string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	return &Client{Socket: path, hc: &http.Client{Transport: tr}}
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://sluice"+path, rd)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the sluice daemon at %s (is `sluice daemon` running? --socket or SLUICE_SOCKET select another): %w", c.Socket, unwrapURL(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var e api.Error
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("daemon answered %s", resp.Status)
	}
	if out == nil {
		return nil
	}
	if b, ok := out.(*[]byte); ok {
		*b, err = io.ReadAll(resp.Body)
		return err
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// NoDaemon reports whether err says that no daemon serves the socket (no
// socket file, or nobody listening), as opposed to a daemon that refused
// or answered badly.
func NoDaemon(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)
}

func unwrapURL(err error) error {
	var ue interface{ Unwrap() error }
	if errors.As(err, &ue) {
		if inner := ue.Unwrap(); inner != nil {
			return inner
		}
	}
	return err
}

// Attach attaches or replaces a sandbox.
func (c *Client) Attach(ctx context.Context, req api.AttachRequest) (api.Info, error) {
	var info api.Info
	err := c.do(ctx, http.MethodPost, "/v1/sandboxes", req, &info)
	return info, err
}

// Detach removes a sandbox.
func (c *Client) Detach(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/sandboxes/"+name, nil, nil)
}

// List lists the sandboxes.
func (c *Client) List(ctx context.Context) ([]api.Info, error) {
	var out []api.Info
	err := c.do(ctx, http.MethodGet, "/v1/sandboxes", nil, &out)
	return out, err
}

// CA returns a sandbox's CA certificate (PEM).
func (c *Client) CA(ctx context.Context, name string) ([]byte, error) {
	var out []byte
	err := c.do(ctx, http.MethodGet, "/v1/sandboxes/"+name+"/ca", nil, &out)
	return out, err
}

// Events streams audit events (of one sandbox when name is set) to fn
// until ctx is done or the daemon goes away.
func (c *Client) Events(ctx context.Context, name string, fn func(audit.Event) error) error {
	path := "/v1/events"
	if name != "" {
		path += "?sandbox=" + name
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://sluice"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the sluice daemon at %s: %w", c.Socket, unwrapURL(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("daemon answered %s", resp.Status)
	}
	return audit.Decode(resp.Body, fn)
}
