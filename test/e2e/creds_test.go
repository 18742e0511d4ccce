package e2e

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/secrets"
	"github.com/sluice-dev/sluice/pkg/testutil"
)

// Issue 20: OAuth2 minting, SigV4 signing and labels, end to end.

const (
	e2eClientSecret = "cs-E2E-CANARY-client-5e1f"
	e2eRefresh      = "rt-E2E-CANARY-refresh-0a9c"
	e2eAWSKey       = "aws-E2E-CANARY-secret-77d2"
	e2eEndpointBody = "token-endpoint-E2E-CANARY-body"
)

// credsAPI is one loopback HTTPS server (its CA given to sluice as
// --upstream-ca) that is both the OAuth2 token endpoint (POST /token, at
// 127.0.0.1: the sandbox cannot reach it) and the upstream: allowed.test
// answers with the Authorization it got, s3.test verifies SigV4 with the
// AWS SDK's signer.
type credsAPI struct {
	*testutil.HTTPSServer
	mu      sync.Mutex
	refresh string // the refresh token the endpoint accepts now
	fail    bool   // answer 500 with a body that must not leak
	issued  int
	forms   []string
	sigErrs []string
	saw     bytes.Buffer // everything upstream requests carried
}

func startCredsAPI(t *testing.T) *credsAPI {
	t.Helper()
	a := &credsAPI{refresh: e2eRefresh}
	srv, err := testutil.StartHTTPS(t.TempDir(), []string{"allowed.test", "s3.test"}, http.HandlerFunc(a.serve))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	a.HTTPSServer = srv
	return a
}

func (a *credsAPI) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	a.mu.Lock()
	defer a.mu.Unlock()
	if r.URL.Path == "/token" {
		form, _ := urlValues(string(body))
		a.forms = append(a.forms, string(body))
		user, pass, _ := r.BasicAuth()
		if a.fail {
			w.WriteHeader(500)
			io.WriteString(w, `{"error":"server_error","error_description":"`+e2eEndpointBody+`"}`)
			return
		}
		if user == "agent" && pass == e2eClientSecret && form["grant_type"] == "client_credentials" {
			a.issued++
			json.NewEncoder(w).Encode(map[string]any{"access_token": fmt.Sprintf("at-%d", a.issued), "token_type": "Bearer", "expires_in": 3600})
			return
		}
		if user != "agent" || pass != e2eClientSecret || form["grant_type"] != "refresh_token" || form["refresh_token"] != a.refresh {
			w.WriteHeader(400)
			io.WriteString(w, `{"error":"invalid_grant"}`)
			return
		}
		a.issued++
		a.refresh = fmt.Sprintf("%s-rotated-%d", e2eRefresh, a.issued)
		json.NewEncoder(w).Encode(map[string]any{"access_token": fmt.Sprintf("at-%d", a.issued), "token_type": "Bearer",
			"expires_in": 3600, "refresh_token": a.refresh})
		return
	}
	r.Header.Write(&a.saw)
	a.saw.WriteString(r.URL.String())
	a.saw.Write(body)
	if strings.HasPrefix(r.Host, "s3.test") {
		if _, err := testutil.VerifySigV4(r, body, "AKIDE2E", e2eAWSKey, "", "us-east-1", "s3"); err != nil {
			a.sigErrs = append(a.sigErrs, err.Error())
			http.Error(w, "signature", 403)
			return
		}
		io.WriteString(w, "s3 signature ok")
		return
	}
	fmt.Fprintf(w, "auth=%s", strings.ToUpper(r.Header.Get("Authorization")))
}

func urlValues(s string) (map[string]string, error) {
	q, err := url.ParseQuery(s)
	out := map[string]string{}
	for k := range q {
		out[k] = q.Get(k)
	}
	return out, err
}

// TestDaemonOAuth2RotationAndSigV4 (acceptance 1, 2, 4 end to end): a
// daemon sandbox gets tokens minted with a refresh token and requests
// signed with SigV4; the rotated refresh token is written to the store and
// a restarted daemon refreshes with it; labels survive the restart; no
// client secret, refresh token or AWS secret key appears in the sandbox,
// the daemon's logs, the audit log or CLI output.
func TestDaemonOAuth2RotationAndSigV4(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.dns.Set("s3.test", "127.0.0.1")
	api := startCredsAPI(t)
	w.api = api.HTTPSServer
	d := startDaemon(t, w, daemonOpts{})
	var cliOut bytes.Buffer
	cli := func(args ...string) string {
		t.Helper()
		out, err := d.cli(args...)
		cliOut.WriteString(out)
		if err != nil {
			t.Fatalf("sluice %v: %v\n%s", args, err, out)
		}
		return out
	}
	for name, v := range map[string]string{"CORP_CLIENT_SECRET": e2eClientSecret, "CORP_REFRESH": e2eRefresh, "AWS_SECRET_ACCESS_KEY": e2eAWSKey} {
		cmd := exec.Command(sluiceBin(t), "secret", "set", name, "--state-dir", d.state)
		cmd.Stdin = strings.NewReader(v)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("secret set %s: %v\n%s", name, err, out)
		}
	}
	pol := writePolicy(t, w.dir, "creds.yaml", fmt.Sprintf(`version: 1
rules:
  - name: corp
    hosts: [allowed.test]
    oauth2:
      token_url: https://127.0.0.1:%d/token
      grant: refresh_token
      client_id: agent
      client_secret: "{CORP_CLIENT_SECRET}"
      refresh_token: "{CORP_REFRESH}"
      scopes: [read]
  - name: s3
    hosts: [s3.test]
    aws_sigv4: {region: us-east-1, service: s3, access_key_id: AKIDE2E, secret_access_key: "{AWS_SECRET_ACCESS_KEY}"}
`, api.Port))
	cg, pid := sandboxProc(t, "")
	cli("attach", "--policy", pol, "--pid", fmt.Sprint(pid), "--name", "creds", "--label", "user=alice", "--label", "team=ml")
	curl := func(host, path string, extra ...string) string {
		t.Helper()
		args := append([]string{"curl", "-sS", "--max-time", "10", "--cacert", d.caFile("creds")}, extra...)
		args = append(args, fmt.Sprintf("https://%s:%d%s", host, api.Port, path))
		out, err := inSandbox(t, cg, "", args...)
		cliOut.WriteString(out)
		if err != nil {
			t.Fatalf("curl %s: %v\n%s", host, err, out)
		}
		return out
	}
	for i := 0; i < 2; i++ {
		if out := curl("allowed.test", "/v1/x"); out != "auth=BEARER AT-1" {
			t.Fatalf("request %d: %q", i, out)
		}
	}
	// SigV4: the sandbox's own signature is replaced; the server verifies.
	if out := curl("s3.test", "/bucket/key?X-Amz-Signature=forged", "-H", "Authorization: AWS4-HMAC-SHA256 Credential=SANDBOX/x", "-H", "X-Amz-Date: 20200101T000000Z",
		"-X", "PUT", "--data-binary", "hello"); out != "s3 signature ok" {
		t.Fatalf("sigv4: %q (%v)", out, api.sigErrs)
	}

	// Restart: the original refresh token is revoked (rotated); only the
	// stored rotated one works.
	d.stop()
	d.start()
	if out := curl("allowed.test", "/v1/y"); out != "auth=BEARER AT-2" {
		api.mu.Lock()
		t.Fatalf("after restart: %q; token requests %q\n%s", out, api.forms, d.log)
	}
	api.mu.Lock()
	if len(api.forms) != 2 || !strings.Contains(api.forms[1], "rotated-1") || !strings.Contains(api.forms[0], "scope=read") {
		t.Errorf("token requests %q", api.forms)
	}
	api.mu.Unlock()
	var infos []struct {
		Name   string
		Labels map[string]string
		RunPID int `json:"run_pid"`
	}
	err := json.Unmarshal([]byte(cli("list", "--json")), &infos)
	// sluice list also shows the host's live sluice run sandboxes (other
	// tests run in parallel): keep the daemon's own.
	infos = slices.DeleteFunc(infos, func(i struct {
		Name   string
		Labels map[string]string
		RunPID int `json:"run_pid"`
	}) bool {
		return i.RunPID != 0
	})
	if err != nil || len(infos) != 1 || infos[0].Labels["user"] != "alice" || infos[0].Labels["team"] != "ml" {
		t.Fatalf("list after restart: %+v %v", infos, err)
	}
	if out := cli("list"); !strings.Contains(out, "team=ml,user=alice") {
		t.Fatalf("list table: %s", out)
	}
	cli("policy", "explain", pol, "GET", "https://allowed.test/x")
	env, _ := inSandbox(t, cg, "", "sh", "-c", "env; cat /proc/self/environ")

	evs, err := audit.ReadFile(filepath.Join(w.dir, "sluice-audit.jsonl")) // startDaemon's --audit
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, ev := range evs {
		if ev.Sandbox == "creds" && ev.Kind == audit.KindHTTP {
			n++
			if ev.Labels["user"] != "alice" {
				t.Errorf("http event without labels: %+v", ev)
			}
		}
	}
	if n < 4 {
		t.Errorf("%d http events of the sandbox", n)
	}
	lc := &leakCheck{values: []string{e2eClientSecret, e2eRefresh, e2eAWSKey, e2eRefresh + "-rotated-1", e2eRefresh + "-rotated-2"}}
	lc.add("sandbox environment", []byte(env))
	lc.add("daemon log", []byte(d.log.String()))
	lc.add("CLI and sandbox output", cliOut.Bytes())
	lc.addFile(t, filepath.Join(w.dir, "sluice-audit.jsonl")) // startDaemon's --audit
	api.mu.Lock()
	lc.add("upstream requests", api.saw.Bytes())
	api.mu.Unlock()
	lc.check(t)
}

// TestRunOAuth2ClientCredentials (acceptance 1 end to end): under sluice
// run, two requests reuse one token from the endpoint (whose host the
// sandbox cannot reach); the form has the grant and the scopes; the client
// secret is nowhere in the sandbox or the output; a failing endpoint gives
// 502 and the upstream sees nothing.
func TestRunOAuth2ClientCredentials(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	api := startCredsAPI(t)
	w.api = api.HTTPSServer
	secretsFile := filepath.Join(w.dir, "secrets.env")
	if err := os.WriteFile(secretsFile, []byte("CORP_CLIENT_SECRET="+e2eClientSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pol := writePolicy(t, w.dir, "cc.yaml", fmt.Sprintf(`version: 1
rules:
  - name: corp
    hosts: [allowed.test]
    oauth2:
      token_url: https://127.0.0.1:%d/token
      grant: client_credentials
      client_id: agent
      client_secret: "{CORP_CLIENT_SECRET}"
      scopes: [read, write]
`, api.Port))
	url := fmt.Sprintf("https://allowed.test:%d/v1/x", api.Port)
	script := fmt.Sprintf(`curl -sS --max-time 10 %[1]s; echo; curl -sS --max-time 10 %[1]s; echo; curl -sS --max-time 3 -k https://127.0.0.1:%[2]d/token; echo; echo ---env; env; cat /proc/self/environ`, url, api.Port)
	out, code := w.run(t, pol, "--secrets-file", secretsFile, "--", "sh", "-c", script)
	if code != 0 || strings.Count(out, "auth=BEARER AT-1") != 2 {
		t.Fatalf("exit %d\n%s", code, out)
	}
	api.mu.Lock()
	if api.issued != 1 || len(api.forms) != 1 || !strings.Contains(api.forms[0], "grant_type=client_credentials") || !strings.Contains(api.forms[0], "scope=read+write") {
		t.Errorf("token requests %q", api.forms)
	}
	if strings.Contains(out, "error\":") {
		t.Errorf("the sandbox reached the token endpoint:\n%s", out)
	}
	api.fail = true
	sawBefore := api.saw.Len()
	api.mu.Unlock()
	failOut, _ := w.run(t, pol, "--secrets-file", secretsFile, "--", "curl", "-sS", "--max-time", "10", "-w", "status=%{http_code}", url)
	if !strings.Contains(failOut, "status=502") || !strings.Contains(failOut, "oauth2 token for rule corp") {
		t.Fatalf("failing endpoint:\n%s", failOut)
	}
	failed := false
	for _, ev := range w.events(t) {
		if ev.Kind == audit.KindHTTP && ev.Decision == audit.DecisionError && strings.Contains(ev.Reason, "non-2xx status 500") {
			failed = true
		}
	}
	if !failed {
		t.Error("no audit event for the failed token request")
	}
	api.mu.Lock()
	if api.saw.Len() != sawBefore {
		t.Error("the upstream received a request without its token")
	}
	api.mu.Unlock()
	lc := &leakCheck{values: []string{e2eClientSecret, e2eEndpointBody}}
	lc.add("sluice run output and sandbox environment", []byte(out+failOut))
	lc.addFile(t, w.auth)
	lc.check(t)
}

// TestRunLabels (acceptance 5): `sluice run --label user=alice` sends the
// labels in the signed callback body, and `sluice list --json` and the
// audit events show them.
func TestRunLabels(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	priv, err := secrets.LoadOrCreateSigningKey("/var/lib/sluice") // sluice run's default state directory
	if err != nil {
		t.Fatal(err)
	}
	pub := priv.Public().(ed25519.PublicKey)
	var mu sync.Mutex
	var bodies []map[string]any
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cb := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := secrets.Verify(pub, r.Header.Get(secrets.SignatureHeader), body, time.Minute); err != nil {
			http.Error(rw, "bad signature", 401)
			return
		}
		var req map[string]any
		json.Unmarshal(body, &req)
		mu.Lock()
		bodies = append(bodies, req)
		mu.Unlock()
		labels, _ := req["labels"].(map[string]any)
		json.NewEncoder(rw).Encode(map[string]any{"headers": map[string]string{"Authorization": fmt.Sprintf("Bearer for-%v", labels["user"])}})
	})}
	go cb.Serve(ln)
	t.Cleanup(func() { cb.Close() })
	pol := writePolicy(t, w.dir, "cb.yaml", fmt.Sprintf(`version: 1
rules:
  - name: corp
    hosts: [allowed.test]
    callback: {url: "http://%s/credentials", ttl: 5m, timeout: 2s}
`, ln.Addr()))
	// The sandbox cannot see sluice's records (its own mount and PID
	// namespaces): list from outside while the command waits.
	ready, listed := filepath.Join(w.dir, "ready"), filepath.Join(w.dir, "listed")
	script := `curl -sS --max-time 10 "$0"; echo; touch "$1"; i=0; while [ ! -e "$2" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done`
	listOut := make(chan string, 1)
	go func() {
		defer os.WriteFile(listed, nil, 0o644)
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			if _, err := os.Stat(ready); err == nil {
				out, _ := exec.Command(sluiceBin(t), "list", "--json", "--socket", filepath.Join(w.dir, "none.sock")).Output()
				listOut <- string(out)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		listOut <- ""
	}()
	out, code := w.run(t, pol, "--label", "user=alice", "--label", "team=ml", "--name", "labelled", "--", "sh", "-c", script,
		fmt.Sprintf("https://allowed.test:%d/v1/x", w.api.Port), ready, listed)
	if code != 0 {
		t.Fatalf("sluice run: exit %d\n%s", code, out)
	}
	list := <-listOut
	reqs := w.api.Requests()
	if len(reqs) != 1 || reqs[0].Header.Get("Authorization") != "Bearer for-alice" {
		t.Fatalf("upstream requests %+v\n%s", reqs, out)
	}
	mu.Lock()
	if len(bodies) != 1 || fmt.Sprint(bodies[0]["labels"]) != "map[team:ml user:alice]" || bodies[0]["sandbox"] != "labelled" {
		t.Errorf("callback bodies %v", bodies)
	}
	mu.Unlock()
	var infos []struct {
		Name   string
		Labels map[string]string
		RunPID int `json:"run_pid"`
	}
	if err := json.NewDecoder(strings.NewReader(list)).Decode(&infos); err != nil {
		t.Fatalf("list output: %v\n%s", err, out)
	}
	found := false
	for _, i := range infos {
		if i.Name == "labelled" {
			found = i.Labels["user"] == "alice" && i.Labels["team"] == "ml" && i.RunPID > 0
		}
	}
	if !found {
		t.Fatalf("sluice list --json inside the run: %+v", infos)
	}
	labelled := 0
	for _, ev := range w.events(t) {
		if ev.Labels["user"] == "alice" && ev.Labels["team"] == "ml" {
			labelled++
		} else if ev.Sandbox == "labelled" && ev.Kind != audit.KindAudit {
			t.Errorf("event without labels: %+v", ev)
		}
	}
	if labelled == 0 {
		t.Fatal("no audit event carries the labels")
	}
	if _, err := os.Stat(filepath.Join("/run/sluice/run")); err == nil {
		if m, _ := filepath.Glob("/run/sluice/run/*.json"); len(m) > 0 {
			for _, f := range m {
				data, _ := os.ReadFile(f)
				if strings.Contains(string(data), `"labelled"`) {
					t.Errorf("run record %s left behind", f)
				}
			}
		}
	}
}
