package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"

	"github.com/sluice-dev/sluice/pkg/audit"
	"golang.org/x/sys/unix"
)

// apiError is an error with the HTTP status the API answers with.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

type credKey struct{}

// withPeerCred stores the connecting process's credentials (SO_PEERCRED)
// in the request context.
func withPeerCred(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *unix.Ucred
	_ = raw.Control(func(fd uintptr) {
		cred, _ = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if cred == nil {
		return ctx
	}
	return context.WithValue(ctx, credKey{}, cred)
}

const maxRequestBody = 4 << 20

func (d *Daemon) api() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/sandboxes", func(w http.ResponseWriter, r *http.Request) {
		var req AttachRequest
		dec := json.NewDecoder(io.LimitReader(r.Body, maxRequestBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeErr(w, &apiError{http.StatusBadRequest, "malformed attach request: " + err.Error()})
			return
		}
		info, err := d.Attach(r.Context(), req)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, info)
	})
	mux.HandleFunc("GET /v1/sandboxes", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.List())
	})
	mux.HandleFunc("DELETE /v1/sandboxes/{name}", func(w http.ResponseWriter, r *http.Request) {
		if err := d.Detach(r.PathValue("name")); err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"detached": r.PathValue("name")})
	})
	mux.HandleFunc("GET /v1/sandboxes/{name}/ca", func(w http.ResponseWriter, r *http.Request) {
		pem, err := d.CA(r.PathValue("name"))
		if err != nil {
			writeErr(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/x-pem-file")
		_, _ = w.Write(pem)
	})
	mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, r *http.Request) {
		name := r.URL.Query().Get("sandbox")
		sub := d.bcast.Subscribe(1024, func(ev *audit.Event) bool { return name == "" || ev.Sandbox == name })
		defer sub.Unsubscribe()
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		fl, _ := w.(http.Flusher)
		if fl != nil {
			fl.Flush()
		}
		enc := json.NewEncoder(w)
		for {
			select {
			case <-r.Context().Done():
				return
			case ev, ok := <-sub.C:
				if !ok {
					return
				}
				if enc.Encode(ev) != nil {
					return
				}
				if fl != nil {
					fl.Flush()
				}
			}
		}
	})
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"ok": true, "sandboxes": len(d.List())})
	})
	return rootOnly(mux)
}

// rootOnly refuses callers that are not root, whatever the socket's mode.
func rootOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cred, _ := r.Context().Value(credKey{}).(*unix.Ucred)
		if cred == nil || cred.Uid != 0 {
			uid := "unknown"
			if cred != nil {
				uid = fmt.Sprint(cred.Uid)
			}
			writeErr(w, &apiError{http.StatusForbidden, "the sluice control socket is for root only (caller uid " + uid + ")"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, err error) {
	var ae *apiError
	if errors.As(err, &ae) {
		writeJSON(w, ae.status, map[string]string{"error": ae.msg})
		return
	}
	writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
}

// Client talks to a daemon's control socket.
type Client struct {
	Socket string
	hc     *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
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
		rd = bytesReader(data)
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
		var e struct {
			Error string `json:"error"`
		}
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
func (c *Client) Attach(ctx context.Context, req AttachRequest) (Info, error) {
	var info Info
	err := c.do(ctx, http.MethodPost, "/v1/sandboxes", req, &info)
	return info, err
}

// Detach removes a sandbox.
func (c *Client) Detach(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/sandboxes/"+name, nil, nil)
}

// List lists the sandboxes.
func (c *Client) List(ctx context.Context) ([]Info, error) {
	var out []Info
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

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }
