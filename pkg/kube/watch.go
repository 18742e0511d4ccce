package kube

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// Service-account files kubelet mounts into every pod.
const (
	ServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"
)

// ErrExpired reports a watch whose resourceVersion is too old (HTTP 410):
// list again.
var ErrExpired = errors.New("watch expired (410 Gone): relist")

// Client is a minimal Kubernetes API client for listing and watching the
// pods of one node. It reads the bearer token file on every request, so
// rotated service-account tokens are picked up.
type Client struct {
	Base      string // https://host:port
	TokenFile string
	hc        *http.Client
}

// NewClient returns a client for the API server at base, trusting the PEM
// roots in caFile ("" for the system roots), authenticating with the token
// in tokenFile ("" for none).
func NewClient(base, caFile, tokenFile string) (*Client, error) {
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("reading the API server CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificate in %s", caFile)
		}
		tlsCfg.RootCAs = pool
	}
	tr := &http.Transport{TLSClientConfig: tlsCfg, Proxy: nil, ResponseHeaderTimeout: 30 * time.Second}
	return &Client{Base: strings.TrimRight(base, "/"), TokenFile: tokenFile, hc: &http.Client{Transport: tr}}, nil
}

// InClusterClient returns a client from the pod's environment
// (KUBERNETES_SERVICE_HOST/PORT) and its service-account token and CA.
func InClusterClient() (*Client, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return nil, errors.New("not running in a Kubernetes pod: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are unset (use --kube-api)")
	}
	return NewClient("https://"+net.JoinHostPort(host, port), ServiceAccountDir+"/ca.crt", ServiceAccountDir+"/token")
}

func (c *Client) get(ctx context.Context, q url.Values) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Base+"/api/v1/pods?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	if c.TokenFile != "" {
		tok, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("reading the service-account token: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("kubernetes API: %w", err)
	}
	if resp.StatusCode == http.StatusGone {
		resp.Body.Close()
		return nil, ErrExpired
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		var st struct {
			Message string `json:"message"`
		}
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(data, &st) == nil && st.Message != "" {
			return nil, fmt.Errorf("kubernetes API: %s: %s", resp.Status, st.Message)
		}
		return nil, fmt.Errorf("kubernetes API: %s", resp.Status)
	}
	return resp, nil
}

func nodeSelector(node string) string { return "spec.nodeName=" + node }

// ListPods lists the pods of node and returns the list's resourceVersion.
func (c *Client) ListPods(ctx context.Context, node string) ([]Pod, string, error) {
	resp, err := c.get(ctx, url.Values{"fieldSelector": {nodeSelector(node)}})
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	var list struct {
		Metadata struct {
			ResourceVersion string `json:"resourceVersion"`
		} `json:"metadata"`
		Items []Pod `json:"items"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 256<<20)).Decode(&list); err != nil {
		return nil, "", fmt.Errorf("kubernetes API: decoding the pod list: %w", err)
	}
	return list.Items, list.Metadata.ResourceVersion, nil
}

// WatchPods streams the pod events of node from resourceVersion rv to fn
// until the stream ends, ctx is done or fn fails. It returns the last
// resourceVersion seen (to resume from) and ErrExpired when the API server
// says rv is too old.
func (c *Client) WatchPods(ctx context.Context, node, rv string, fn func(Event) error) (string, error) {
	resp, err := c.get(ctx, url.Values{"fieldSelector": {nodeSelector(node)}, "watch": {"1"},
		"resourceVersion": {rv}, "allowWatchBookmarks": {"true"}, "timeoutSeconds": {"300"}})
	if err != nil {
		return rv, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(strings.TrimSpace(string(line))) == 0 {
			continue
		}
		var raw struct {
			Type   string          `json:"type"`
			Object json.RawMessage `json:"object"`
		}
		if err := json.Unmarshal(line, &raw); err != nil {
			return rv, fmt.Errorf("kubernetes API: malformed watch event: %w", err)
		}
		if raw.Type == "ERROR" {
			var st struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			}
			_ = json.Unmarshal(raw.Object, &st)
			if st.Code == http.StatusGone {
				return rv, ErrExpired
			}
			return rv, fmt.Errorf("kubernetes API: watch error %d: %s", st.Code, st.Message)
		}
		var ev Event
		ev.Type = raw.Type
		if err := json.Unmarshal(raw.Object, &ev.Object); err != nil {
			return rv, fmt.Errorf("kubernetes API: malformed pod in watch event: %w", err)
		}
		if v := ev.Object.Metadata.ResourceVersion; v != "" {
			rv = v
		}
		if err := fn(ev); err != nil {
			return rv, err
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return rv, fmt.Errorf("kubernetes API: reading the watch: %w", err)
	}
	return rv, ctx.Err()
}

// Run lists and watches the pods of node and applies the reconciler's
// actions until ctx is done. Failed actions are logged and retried on the
// pod's next event and at every relist (every watch timeout, 5 minutes).
func Run(ctx context.Context, c *Client, node string, ap *Applier, log *slog.Logger) error {
	r := NewReconciler(node)
	apply := func(acts []Action) {
		for _, a := range acts {
			if err := ap.Apply(ctx, a); err != nil {
				r.Failed(a)
				log.Warn("pod action failed", "op", a.Op, "sandbox", a.Sandbox, "pod", a.Pod, "err", err)
				continue
			}
			log.Info("pod action", "op", a.Op, "sandbox", a.Sandbox, "pod", a.Pod, "policy", a.Policy, "reason", a.Reason)
		}
	}
	backoff := time.Second
	for ctx.Err() == nil {
		pods, rv, err := c.ListPods(ctx, node)
		if err == nil {
			var have []string
			if have, err = ap.Daemon.List(ctx); err == nil {
				apply(r.Sync(pods, have))
				backoff = time.Second
				// One watch until the server ends it (timeoutSeconds), then
				// relist: the relist retries failed actions and detaches
				// sandboxes whose pods vanished unseen.
				_, err = c.WatchPods(ctx, node, rv, func(ev Event) error { apply(r.Handle(ev)); return nil })
			}
		}
		if ctx.Err() != nil {
			break
		}
		if err != nil && !errors.Is(err, ErrExpired) {
			log.Warn("pod watch", "err", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, time.Minute)
		}
	}
	return nil
}
