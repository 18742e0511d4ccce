package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/secrets"
)

// Issue 7: secret values never leak, whatever their source, and a new
// value takes effect without a reload.

// leakValue is a distinctive secret value for one flow.
func leakValue(t *testing.T, flow string) string {
	t.Helper()
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "sk-leaktest-" + flow + "-" + hex.EncodeToString(b)
}

// leakCheck collects everything a leak could show up in and greps it at
// the end of the test.
type leakCheck struct {
	values  []string
	sources map[string][]byte
}

func (l *leakCheck) add(what string, data []byte) {
	if l.sources == nil {
		l.sources = map[string][]byte{}
	}
	l.sources[what] = append(l.sources[what], data...)
}

func (l *leakCheck) addFile(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("leak check: %v", err)
	}
	l.add(path, data)
}

// addTree adds every regular file below dir except skip (base names).
func (l *leakCheck) addTree(t *testing.T, dir string, skip ...string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		for _, s := range skip {
			if d.Name() == s {
				return nil
			}
		}
		n++
		l.addFile(t, p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatalf("leak check: no files below %s", dir)
	}
}

func (l *leakCheck) check(t *testing.T) {
	t.Helper()
	for what, data := range l.sources {
		for _, v := range l.values {
			if bytes.Contains(data, []byte(v)) {
				t.Errorf("LEAK: a secret value appears in %s", what)
			}
		}
	}
}

const leakPolicy = `version: 1
rules:
  - name: api
    hosts: [allowed.test]
    headers:
      - {name: Authorization, type: secret, value: "Bearer {LEAK_TOKEN}"}
`

// sandboxDump prints the sandbox's environment and the files sluice put in
// its reach (CA bundle directory, TMPDIR).
const sandboxDump = `env; echo ---environ; tr '\0' '\n' < /proc/self/environ; echo
for d in "$(dirname "${SSL_CERT_FILE:-/nonexistent/x}")" "${TMPDIR:-/nonexistent}"; do
  [ -d "$d" ] || continue
  echo "---dir $d"; ls -la "$d"; for f in "$d"/*; do [ -f "$f" ] && { echo "---file $f"; cat "$f"; }; done
done`

func TestSecretsNeverLeak(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	lc := &leakCheck{}
	pol := writePolicy(t, w.dir, "leak.yaml", leakPolicy)
	url := fmt.Sprintf("https://allowed.test:%d/leak", w.api.Port)
	lc.values = append(lc.values, demoSecret)

	// upstreamGot reports whether the upstream's last request carried v.
	upstreamGot := func(v string) bool {
		reqs := w.api.Requests()
		return len(reqs) > 0 && reqs[len(reqs)-1].Header.Get("Authorization") == "Bearer "+v
	}

	t.Run("secret-env", func(t *testing.T) {
		v := leakValue(t, "env")
		lc.values = append(lc.values, v)
		w.env = []string{"LEAK_TOKEN=" + v}
		defer func() { w.env = nil }()
		out, code := w.run(t, pol, "--secret-env", "LEAK_TOKEN", "--",
			"sh", "-c", `curl -sS --max-time 10 "$0"; echo; `+sandboxDump, url)
		lc.add("sluice run output (secret-env)", []byte(out))
		lc.addFile(t, w.auth)
		if code != 0 || !strings.Contains(out, "hello from upstream /leak") || !upstreamGot(v) {
			t.Fatalf("secret-env flow: exit %d, upstream got the value: %v\n%s", code, upstreamGot(v), out)
		}
		if !strings.Contains(out, "BEGIN CERTIFICATE") || strings.Contains(out, "LEAK_TOKEN=") {
			t.Fatalf("sandbox dump: want the CA bundle and no LEAK_TOKEN variable:\n%.3000s", out)
		}
	})

	t.Run("secrets-file", func(t *testing.T) {
		v := leakValue(t, "file")
		lc.values = append(lc.values, v)
		sf := filepath.Join(w.dir, "secrets.env")
		if err := os.WriteFile(sf, []byte("# test\nLEAK_TOKEN="+v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		// As an unprivileged user the sandbox cannot read the secrets
		// file itself either.
		out, code := w.run(t, pol, "--secrets-file", sf, "--user", "65534", "--",
			"sh", "-c", `curl -sS --max-time 10 "$0"; echo; cat "$1" && echo READ-SECRETS-FILE; `+sandboxDump, url, sf)
		lc.add("sluice run output (secrets-file)", []byte(out))
		lc.addFile(t, w.auth)
		if code != 0 || !strings.Contains(out, "hello from upstream /leak") || !upstreamGot(v) {
			t.Fatalf("secrets-file flow: exit %d, upstream got the value: %v\n%s", code, upstreamGot(v), out)
		}
		if strings.Contains(out, "READ-SECRETS-FILE") {
			t.Fatal("the sandbox (uid 65534) could read the 0600 secrets file")
		}
		if !strings.Contains(out, "BEGIN CERTIFICATE") {
			t.Fatalf("sandbox dump lacks the CA bundle:\n%.3000s", out)
		}

		// A secrets file readable by others is refused, telling the user
		// how to fix it, without printing the value.
		if err := os.Chmod(sf, 0o644); err != nil {
			t.Fatal(err)
		}
		out, code = w.run(t, pol, "--secrets-file", sf, "--", "true")
		lc.add("sluice run output (secrets-file 0644)", []byte(out))
		if code == 0 || !strings.Contains(out, "chmod 600") {
			t.Fatalf("secrets file with mode 0644: exit %d, want a refusal that says chmod 600:\n%s", code, out)
		}
	})

	t.Run("store-daemon", func(t *testing.T) {
		v1, v2 := leakValue(t, "store1"), leakValue(t, "store2")
		lc.values = append(lc.values, v1, v2)
		d := startDaemon(t, w, daemonOpts{})
		set := func(v string) {
			t.Helper()
			cmd := exec.Command(sluiceBin(t), "secret", "set", "LEAK_TOKEN", "--state-dir", d.state)
			cmd.Stdin = strings.NewReader(v)
			out, err := cmd.CombinedOutput()
			lc.add("sluice secret set output", out)
			if err != nil {
				t.Fatalf("secret set: %v\n%s", err, out)
			}
		}
		cli := func(args ...string) string {
			t.Helper()
			out, err := d.cli(args...)
			lc.add("sluice "+args[0]+" output", []byte(out))
			if err != nil {
				t.Fatalf("sluice %v: %v\n%s", args, err, out)
			}
			return out
		}
		set(v1)
		cg, pid := sandboxProc(t, "")
		cli("attach", "--policy", pol, "--pid", fmt.Sprint(pid), "--name", "leak", "--json")
		caFile := filepath.Join(w.dir, "leak-ca.pem")
		if err := os.WriteFile(caFile, []byte(cli("ca", "export", "leak")), 0o644); err != nil {
			t.Fatal(err)
		}
		curl := func() string {
			t.Helper()
			out, err := inSandbox(t, cg, "", "curl", "-sS", "--max-time", "10", "--cacert", caFile, url)
			lc.add("sandbox curl output", []byte(out))
			if err != nil || !strings.Contains(out, "hello from upstream /leak") {
				t.Fatalf("curl in the attached sandbox: %v\n%s", err, out)
			}
			return out
		}
		curl()
		if !upstreamGot(v1) {
			t.Fatal("the upstream did not get the stored secret")
		}
		// Rotation: a new value takes effect for the next request, with
		// no reload or re-attach.
		set(v2)
		curl()
		if !upstreamGot(v2) {
			t.Fatal("after `sluice secret set`, the next request still carried the old value (rotation needs no reload)")
		}
		out, _ := inSandbox(t, cg, "", "sh", "-c", sandboxDump)
		lc.add("sandbox environment (daemon)", []byte(out))
		if env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid)); err == nil {
			lc.add("sandbox process environ (daemon)", env)
		}
		cli("secret", "list", "--json", "--state-dir", d.state)
		cli("list", "--json")
		logs, _ := exec.Command(sluiceBin(t), "logs", "--json", "--all", "--file", d.audit).CombinedOutput()
		lc.add("sluice logs output", logs)
		lc.addTree(t, d.state, secrets.StoreFile) // while attached
		cli("detach", "leak")
		d.stop()
		lc.add("daemon log", []byte(d.log.String()))
		lc.addFile(t, d.audit)
		lc.addTree(t, d.state, secrets.StoreFile)
		if d.log.String() == "" {
			t.Log("note: the daemon logged nothing")
		}
	})

	t.Run("opaque-callback-daemon", func(t *testing.T) {
		opaque, cbToken := leakValue(t, "opaque"), leakValue(t, "callback")
		lc.values = append(lc.values, opaque, cbToken)
		var calls atomic.Int64
		cb := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			rw.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(rw, `{"headers": {"Authorization": "Bearer %s"}}`, cbToken)
		}))
		t.Cleanup(cb.Close)
		// The policy file is the input that carries the opaque value once;
		// it is not graded.
		opol := writePolicy(t, w.dir, "opaque.yaml", fmt.Sprintf(`version: 1
rules:
  - name: api
    hosts: [allowed.test]
    headers:
      - {name: X-Api-Key, type: opaque, value: "%s"}
  - name: cb
    hosts: [plain.test]
    callback: {url: "%s/creds", ttl: 5m, timeout: 2s}
`, opaque, cb.URL))
		d := startDaemon(t, w, daemonOpts{})
		cli := func(args ...string) string {
			t.Helper()
			out, err := d.cli(args...)
			lc.add("sluice "+strings.Join(args, " ")+" output", []byte(out))
			if err != nil {
				t.Fatalf("sluice %v: %v\n%s", args, err, out)
			}
			return out
		}
		cg, pid := sandboxProc(t, "")
		cli("attach", "--policy", opol, "--pid", fmt.Sprint(pid), "--name", "opq", "--json")
		caFile := filepath.Join(w.dir, "opq-ca.pem")
		if err := os.WriteFile(caFile, []byte(cli("ca", "export", "opq")), 0o644); err != nil {
			t.Fatal(err)
		}
		request := func(host, header, want string) {
			t.Helper()
			u := fmt.Sprintf("https://%s:%d/leak", host, w.api.Port)
			out, err := inSandbox(t, cg, "", "curl", "-sS", "--max-time", "10", "--cacert", caFile, u)
			lc.add("sandbox curl output", []byte(out))
			if err != nil || !strings.Contains(out, "hello from upstream /leak") {
				t.Fatalf("curl %s in the attached sandbox: %v\n%s", host, err, out)
			}
			reqs := w.api.Requests()
			if got := reqs[len(reqs)-1].Header.Get(header); got != want {
				t.Fatalf("%s: the upstream did not get the %s value (%d bytes)", host, header, len(got))
			}
		}
		request("allowed.test", "X-Api-Key", opaque)
		request("plain.test", "Authorization", "Bearer "+cbToken)
		if calls.Load() != 1 {
			t.Fatalf("callback called %d times, want 1", calls.Load())
		}
		// After a restart the opaque value comes back from the encrypted
		// store, not from a plaintext state file.
		d.stop()
		lc.add("daemon log (first run)", []byte(d.log.String()))
		d.start()
		var out string
		var err error
		for i := 0; i < 30; i++ {
			if out, err = inSandbox(t, cg, "", "curl", "-sS", "--max-time", "10", "--cacert", caFile,
				fmt.Sprintf("https://allowed.test:%d/leak", w.api.Port)); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		lc.add("sandbox curl output", []byte(out))
		reqs := w.api.Requests()
		if err != nil || reqs[len(reqs)-1].Header.Get("X-Api-Key") != opaque {
			t.Fatalf("after a daemon restart the opaque header is not injected: %v\n%s", err, out)
		}
		cli("list", "--json")
		explain, _ := exec.Command(sluiceBin(t), "policy", "explain", opol, "GET", "https://allowed.test/leak").CombinedOutput()
		lc.add("sluice policy explain output", explain)
		if !strings.Contains(string(explain), "<opaque>") {
			t.Errorf("policy explain does not show the opaque value as <opaque>:\n%s", explain)
		}
		dump, _ := inSandbox(t, cg, "", "sh", "-c", sandboxDump)
		lc.add("sandbox environment (daemon, opaque)", []byte(dump))
		logs, _ := exec.Command(sluiceBin(t), "logs", "--json", "--all", "--file", d.audit).CombinedOutput()
		lc.add("sluice logs output", logs)
		lc.addTree(t, d.state, secrets.StoreFile) // while attached
		cli("detach", "opq")
		d.stop()
		lc.add("daemon log", []byte(d.log.String()))
		lc.addFile(t, d.audit)
		lc.addTree(t, d.state, secrets.StoreFile)
	})

	if len(lc.values) != 7 {
		t.Fatalf("only %d of the flows ran", len(lc.values)-1)
	}
	lc.check(t)
}
