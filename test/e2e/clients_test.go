package e2e

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/cgroup"
	"github.com/sluice-dev/sluice/pkg/testutil"
	"github.com/sluice-dev/sluice/pkg/tlsca"
)

// Issue 6: real clients inside `sluice run` reach an intercepted host and
// get credentials injected they never see.

// goGetEnv makes the test binary, re-executed inside a sandbox, act as a
// plain Go HTTPS client (net/http defaults, SSL_CERT_FILE honoured by
// crypto/x509) instead of running tests.
const goGetEnv = "SLUICE_TEST_GOGET"

func init() {
	url := os.Getenv(goGetEnv)
	if url == "" {
		return
	}
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		fmt.Println("go client error:", err)
		os.Exit(1)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Printf("go client status %d\n%s", resp.StatusCode, body)
	os.Exit(0)
}

// goClient is the sandbox command line that runs the Go client on url.
func goClient(url string) []string {
	return []string{"env", goGetEnv + "=" + url, os.Args[0], "-test.run=^$"}
}

// useAPI replaces the world's upstream by one serving handler (nil: the
// default hello answer) for names, with its own CA.
func useAPI(t *testing.T, w *world, names []string, handler http.Handler) *testutil.HTTPSServer {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	api, err := testutil.StartHTTPS(dir, names, handler)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(api.Close)
	w.api = api
	return api
}

func TestClientsGetInjectedHeader(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	requireTools(t, "curl", "git", "python3", "node")
	repos := t.TempDir()
	if err := testutil.GitRepo(repos, "demo.git", "cloned through sluice\n"); err != nil {
		t.Fatal(err)
	}
	git, err := testutil.GitHTTPBackend(repos)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/demo.git/", git)
	mux.HandleFunc("/", func(rw http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(rw, "hello from upstream %s\n", r.URL.Path)
	})
	api := useAPI(t, w, []string{"allowed.test"}, mux)
	base := fmt.Sprintf("https://allowed.test:%d", api.Port)
	clone := filepath.Join(w.dir, "clone")

	clients := []struct {
		name   string
		prefix string // request paths of this client start with it
		cmd    []string
		want   string
	}{
		{"curl", "/curl", []string{"curl", "-sS", "--max-time", "10", base + "/curl"}, "hello from upstream /curl"},
		{"git", "/demo.git/", []string{"env", "GIT_TERMINAL_PROMPT=0", "GIT_CONFIG_NOSYSTEM=1", "sh", "-c",
			`git clone -q "$0" "$1" && cat "$1/README"`, base + "/demo.git", clone}, "cloned through sluice"},
		{"python", "/python", []string{"python3", "-c",
			"import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())",
			base + "/python"}, "hello from upstream /python"},
		{"node", "/node", []string{"node", "-e",
			"fetch(process.argv[1]).then(r => r.text()).then(t => console.log(t)).catch(e => { console.error(e); process.exit(1) })",
			base + "/node"}, "hello from upstream /node"},
		{"go", "/go", goClient(base + "/go"), "hello from upstream /go"},
	}
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			out, code := w.run(t, "", c.cmd...)
			if code != 0 || !strings.Contains(out, c.want) {
				t.Fatalf("%s through sluice: exit %d, want %q in:\n%s", c.name, code, c.want, out)
			}
			var n int
			for _, r := range api.Requests() {
				if !strings.HasPrefix(r.Path, c.prefix) {
					continue
				}
				n++
				if got := r.Header.Get("Authorization"); got != "Bearer "+demoSecret {
					t.Errorf("%s %s reached the upstream without the injected Authorization (got %d bytes)", r.Method, r.Path, len(got))
				}
			}
			if n == 0 {
				t.Fatalf("the upstream recorded no request from %s", c.name)
			}
			w.events(t) // fails if the secret is in the audit log
		})
	}

	// Inside the sandbox: neither the environment nor the files sluice put
	// there (CA bundle directory) hold the secret; DEMO_TOKEN is gone.
	script := `env; echo ---environ; tr '\0' '\n' < /proc/self/environ; echo
for d in "$(dirname "$SSL_CERT_FILE")" "$(dirname "$NODE_EXTRA_CA_CERTS")"; do
  echo "---dir $d"; ls -la "$d"; for f in "$d"/*; do echo "---file $f"; cat "$f"; done
done`
	out, code := w.run(t, "", "sh", "-c", script)
	if code != 0 {
		t.Fatalf("listing the sandbox's environment: exit %d\n%s", code, out)
	}
	for _, want := range []string{"SSL_CERT_FILE=", "NODE_EXTRA_CA_CERTS=", "---environ", "BEGIN CERTIFICATE", "---file"} {
		if !strings.Contains(out, want) {
			t.Fatalf("sandbox listing lacks %q (the check could not have failed):\n%.2000s", want, out)
		}
	}
	if strings.Contains(out, "DEMO_TOKEN=") {
		t.Fatal("DEMO_TOKEN (the --secret-env source) is in the sandbox's environment")
	}
	// w.run has already failed the test if the secret were in out.
}

// TestSandboxSeesNoSecretAnywhere: while a sandbox that used an injected
// credential is still running, no file in the places a sandbox can write
// or read scratch data (/tmp, /var/tmp, /dev/shm, /run) and no environment
// or command line of its processes holds the secret. The secret is made
// fresh for the test, so only files whose contents or metadata changed
// since then (ctime, which no process can set back) can hold it: older
// files are skipped (the machine's /tmp holds gigabytes of build caches).
func TestSandboxSeesNoSecretAnywhere(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	born := time.Now().Add(-2 * time.Second) // ctime is coarse; be generous
	secret := leakValue(t, "scan")
	w.env = []string{"LEAK_TOKEN=" + secret}
	pol := writePolicy(t, w.dir, "scan.yaml", leakPolicy)
	ready, scanned := filepath.Join(w.dir, "ready"), filepath.Join(w.dir, "scanned")
	type scanResult struct {
		hits    []string
		scanned int
		procs   int
	}
	done := make(chan scanResult, 1)
	go func() {
		var r scanResult
		defer func() {
			os.WriteFile(scanned, nil, 0o644)
			done <- r
		}()
		deadline := time.Now().Add(20 * time.Second)
		for {
			if _, err := os.Stat(ready); err == nil {
				break
			}
			if time.Now().After(deadline) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		// The sandbox's processes: sluice-run-* cgroups below ours.
		self, err := cgroup.Self()
		if err != nil {
			return
		}
		needle := []byte(secret)
		cgs, _ := filepath.Glob(filepath.Join(self, "sluice-run-*", "cgroup.procs"))
		for _, procs := range cgs {
			data, _ := os.ReadFile(procs)
			for _, pid := range strings.Fields(string(data)) {
				r.procs++
				for _, f := range []string{"environ", "cmdline"} {
					if b, err := os.ReadFile(filepath.Join("/proc", pid, f)); err == nil && bytes.Contains(b, needle) {
						r.hits = append(r.hits, "/proc/"+pid+"/"+f)
					}
				}
			}
		}
		for _, root := range []string{"/tmp", "/var/tmp", "/dev/shm", "/run"} {
			_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
				if err != nil || !d.Type().IsRegular() {
					return nil
				}
				info, err := d.Info()
				if err != nil || info.Size() > 8<<20 {
					return nil
				}
				if st, ok := info.Sys().(*syscall.Stat_t); ok && time.Unix(st.Ctim.Unix()).Before(born) {
					return nil // unchanged since before the secret existed
				}
				data, err := os.ReadFile(p)
				if err != nil {
					return nil
				}
				r.scanned++
				if bytes.Contains(data, needle) {
					r.hits = append(r.hits, p)
				}
				return nil
			})
		}
		_ = os.WriteFile(scanned, nil, 0o644)
	}()
	url := fmt.Sprintf("https://allowed.test:%d/scan", w.api.Port)
	out, code := w.run(t, pol, "--secret-env", "LEAK_TOKEN", "--",
		"sh", "-c", `curl -sS --max-time 30 "$0" && touch "$1" && i=0 && while [ ! -e "$2" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done`,
		url, ready, scanned)
	r := <-done
	if code != 0 || !strings.Contains(out, "hello from upstream /scan") {
		t.Fatalf("curl: exit %d\n%s", code, out)
	}
	if reqs := w.api.Requests(); len(reqs) != 1 || reqs[0].Header.Get("Authorization") != "Bearer "+secret {
		t.Fatal("the upstream did not get the injected secret")
	}
	if r.scanned == 0 || r.procs == 0 {
		t.Fatalf("scanned %d files and %d sandbox processes: the scan did not run", r.scanned, r.procs)
	}
	t.Logf("scanned %d files changed since the secret was made and %d sandbox processes", r.scanned, r.procs)
	if strings.Contains(out, secret) {
		t.Error("the secret appeared in the sandbox's output")
	}
	for _, h := range r.hits {
		t.Errorf("the secret is readable at %s while the sandbox runs", h)
	}
}

// TestProxyRefusalExplainsAndKeepsConnection: a path or method outside the
// rule gets 403 with a readable body; an allowed path then works on the
// same (kept-alive) connection.
func TestProxyRefusalExplainsAndKeepsConnection(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	pol := writePolicy(t, w.dir, "paths.yaml", `version: 1
rules:
  - name: api
    hosts: [allowed.test]
    paths: ["/v1/*"]
    methods: [GET]
    headers:
      - {name: Authorization, type: secret, value: "Bearer {DEMO_TOKEN}"}
`)
	base := fmt.Sprintf("https://allowed.test:%d", w.api.Port)
	out, code := w.run(t, pol, "curl", "-sS", "--max-time", "10", "-w", "\n[status %{http_code} connects %{num_connects}]\n",
		base+"/admin/users", base+"/v1/ok")
	if code != 0 {
		t.Fatalf("curl: exit %d\n%s", code, out)
	}
	for _, want := range []string{"sluice policy", "host: allowed.test", "method: GET", "path: /admin/users",
		"[status 403 connects 1]", "hello from upstream /v1/ok", "[status 200 connects 0]"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Fatalf("curl output:\n%s", out)
	}

	out, code = w.run(t, pol, "curl", "-sS", "--max-time", "10", "-X", "DELETE", "-w", "\n[status %{http_code}]\n", base+"/v1/ok")
	if code != 0 || !strings.Contains(out, "[status 403]") || !strings.Contains(out, "method: DELETE") ||
		!strings.Contains(out, "sluice policy") || !strings.Contains(out, "path: /v1/ok") {
		t.Fatalf("DELETE outside the rule: exit %d, want 403 naming the method:\n%s", code, out)
	}
	for _, r := range w.api.Requests() {
		if r.Path != "/v1/ok" || r.Method != http.MethodGet {
			t.Errorf("a refused request reached the upstream: %s %s", r.Method, r.Path)
		}
	}
	if n := len(w.api.Requests()); n != 1 {
		t.Fatalf("upstream got %d requests, want 1 (the allowed GET)", n)
	}
}

// TestProxyRedactsEchoedSecret: an upstream that echoes request headers
// (in its response headers and body) never shows the sandbox the secret.
func TestProxyRedactsEchoedSecret(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	useAPI(t, w, []string{"allowed.test"}, http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		keys := make([]string, 0, len(r.Header))
		for k := range r.Header {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			rw.Header().Set("Echo-"+k, r.Header.Get(k))
		}
		for _, k := range keys {
			fmt.Fprintf(rw, "%s: %s\n", k, r.Header.Get(k))
		}
	}))
	url := fmt.Sprintf("https://allowed.test:%d/echo", w.api.Port)
	out, code := w.run(t, "", "curl", "-sS", "-i", "--max-time", "10", url)
	if code != 0 {
		t.Fatalf("curl: exit %d\n%s", code, out)
	}
	// Body and header echo both redacted (w.run fails on the secret itself).
	if n := strings.Count(out, "[redacted by sluice]"); n < 2 {
		t.Fatalf("want the redaction marker in the echoed header and body, found %d:\n%s", n, out)
	}
	if !regexp.MustCompile(`(?m)^Authorization: .*\[redacted by sluice\]`).MatchString(out) {
		t.Fatalf("the echoed body's Authorization line is not redacted:\n%s", out)
	}
	if reqs := w.api.Requests(); len(reqs) != 1 || reqs[0].Header.Get("Authorization") != "Bearer "+demoSecret {
		t.Fatal("the upstream did not receive the injected header")
	}
	var secretEv bool
	for _, ev := range w.events(t) {
		if ev.Kind == audit.KindSecret {
			secretEv = true
		}
	}
	if !secretEv {
		t.Fatal("no audit event of kind secret for the echoed credential")
	}
}

// tlsUpstream serves cert on loopback and counts the HTTP requests that
// got through the handshake.
func tlsUpstream(t *testing.T, cert *tls.Certificate) (port int, requests *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	requests = &atomic.Int64{}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			requests.Add(1)
			fmt.Fprintln(rw, "this upstream must not be reached")
		}),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{*cert}},
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0), // the failed handshakes are the point
	}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port, requests
}

// TestProxyRefusesBadUpstreamCertificate: a certificate for another name,
// or from a CA nobody trusts, gets the sandbox a 502 and the upstream no
// request (so no credential).
func TestProxyRefusesBadUpstreamCertificate(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	trusted, err := tlsca.New("trusted test upstream", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	trustedFile := filepath.Join(w.dir, "trusted-ca.pem")
	if err := os.WriteFile(trustedFile, trusted.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	unknown, err := tlsca.New("unknown test upstream", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	wrongName, err := trusted.Leaf("wrong.test")
	if err != nil {
		t.Fatal(err)
	}
	unknownCA, err := unknown.Leaf("allowed.test")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		cert *tls.Certificate
	}{
		{"wrong name", wrongName},
		{"unknown CA", unknownCA},
	} {
		t.Run(c.name, func(t *testing.T) {
			port, reqs := tlsUpstream(t, c.cert)
			out, code := w.run(t, "", "--upstream-ca", trustedFile, "--",
				"curl", "-sS", "--max-time", "10", "-w", "\n[status %{http_code}]\n", fmt.Sprintf("https://allowed.test:%d/x", port))
			if code != 0 || !strings.Contains(out, "[status 502]") {
				t.Errorf("curl: exit %d, want status 502:\n%s", code, out)
			}
			if n := reqs.Load(); n != 0 {
				t.Errorf("the upstream with a bad certificate received %d requests", n)
			}
		})
	}
}

// caVars are every CA variable sluice run sets: TestRealClients removes
// them all, so the clients can only trust the sandbox CA through the
// bundle bind-mounted over the distribution's trust files (issue 15).
var caVars = []string{"SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "GIT_SSL_CAINFO", "PIP_CERT",
	"NODE_EXTRA_CA_CERTS", "CARGO_HTTP_CAINFO", "AWS_CA_BUNDLE", "DENO_CERT", "NPM_CONFIG_CAFILE",
	"GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", "NIX_SSL_CERT_FILE", "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE", "HTTPLIB2_CA_CERTS", "SLUICE_CA_FILE"}

// withoutCAEnv prefixes cmd with env -u for every CA variable but keep.
func withoutCAEnv(keep string, cmd ...string) []string {
	out := []string{"env"}
	for _, v := range caVars {
		if v != keep {
			out = append(out, "-u", v)
		}
	}
	return append(out, cmd...)
}

const javaGet = `import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;

public class Get {
    public static void main(String[] args) throws Exception {
        HttpClient c = HttpClient.newHttpClient();
        HttpResponse<String> r = c.send(HttpRequest.newBuilder(URI.create(args[0])).build(), HttpResponse.BodyHandlers.ofString());
        System.out.print(r.body());
    }
}
`

// TestRealClients: with certificate checks on, no CA flag and no CA
// variable, real clients run as the default unprivileged sandbox user reach
// an intercepted loopback HTTPS upstream, which sees the injected header.
func TestRealClients(t *testing.T) {
	// Not t.Parallel: its clients are parallel subtests, and those of a
	// parallel test wait for a slot behind every other parallel test of
	// the package, so the 12 clients (java the slowest) ran last, mostly
	// one or two at a time, and made the package's tail. Run among the
	// serial tests, they fill the slots at the start.
	testutil.RequirePrivileged(t)
	tools := []string{"curl", "wget", "php", "ruby", "git", "node", "java", debianPython}
	for _, tool := range tools {
		if _, err := os.Stat(tool); err == nil {
			continue
		}
		if _, err := exec.LookPath(tool); err != nil {
			testutil.KernelLacks(t, "%s is not installed: run scripts/deps.sh", tool)
		}
	}
	repos := t.TempDir()
	if err := testutil.GitRepo(repos, "demo.git", "cloned through sluice\n"); err != nil {
		t.Fatal(err)
	}
	// Each client gets its own world (upstream, resolver, audit log), so
	// that they run in parallel; base is replaced by the world's URL.
	const base = "https://BASE"
	newClientWorld := func(t *testing.T) (*world, *testutil.HTTPSServer, string) {
		w := newWorld(t)
		w.user = ""
		git, err := testutil.GitHTTPBackend(repos)
		if err != nil {
			t.Fatal(err)
		}
		mux := http.NewServeMux()
		mux.Handle("/demo.git/", git)
		mux.HandleFunc("/", func(rw http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(rw, "hello from upstream %s\n", r.URL.Path)
		})
		api := useAPI(t, w, []string{"allowed.test"}, mux)
		return w, api, fmt.Sprintf("https://allowed.test:%d", api.Port)
	}
	pub := publicDir(t)
	javaFile := filepath.Join(pub, "Get.java")
	if err := os.WriteFile(javaFile, []byte(javaGet), 0o644); err != nil {
		t.Fatal(err)
	}
	// The test binary doubles as the Go client; the default sandbox user
	// cannot read Go's build directory, so it runs from a public copy.
	goBin := filepath.Join(pub, "goclient")
	if data, err := os.ReadFile(os.Args[0]); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(goBin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	py := func(code string) []string { return []string{debianPython, "-c", code} }
	// Node (the nodejs.org builds) trusts only its compiled-in roots plus
	// NODE_EXTRA_CA_CERTS, never the system's files: it keeps that one
	// variable, which sluice run sets.
	clients := []struct {
		name string
		cmd  []string
	}{
		{"curl", []string{"curl", "-sS", "--max-time", "10", base + "/curl"}},
		{"wget", []string{"wget", "-q", "-O", "-", "--timeout=10", base + "/wget"}},
		{"php-curl", []string{"php", "-r", `$c = curl_init($argv[1]); curl_setopt($c, CURLOPT_RETURNTRANSFER, true);
$r = curl_exec($c); if ($r === false) { fwrite(STDERR, curl_error($c)); exit(1); } echo $r;`, base + "/php-curl"}},
		{"python-urllib", append(py("import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"), base+"/python-urllib")},
		{"python-requests", append(py("import sys, requests; print(requests.get(sys.argv[1], timeout=10).text)"), base+"/python-requests")},
		{"python-httplib2", append(py("import sys, httplib2; r, c = httplib2.Http(timeout=10).request(sys.argv[1]); print(c.decode())"), base+"/python-httplib2")},
		{"node-https", []string{"node", "-e", `require("https").get(process.argv[1], r => r.pipe(process.stdout)).on("error", e => { console.error(e); process.exit(1) })`, base + "/node-https"}},
		{"node-fetch", []string{"node", "-e", `fetch(process.argv[1]).then(r => r.text()).then(t => console.log(t)).catch(e => { console.error(e); process.exit(1) })`, base + "/node-fetch"}},
		{"go", []string{"env", goGetEnv + "=" + base + "/go", goBin, "-test.run=^$"}},
		{"java", []string{"java", javaFile, base + "/java"}},
		{"ruby", []string{"ruby", "-rnet/http", "-e", "print Net::HTTP.get(URI(ARGV[0]))", base + "/ruby"}},
		{"git", []string{"env", "GIT_TERMINAL_PROMPT=0", "GIT_CONFIG_NOSYSTEM=1", "sh", "-c",
			`cd "$HOME" && git clone -q "$0" clone && cat clone/README`, base + "/demo.git"}},
	}
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			w, api, url := newClientWorld(t)
			cmd := make([]string, len(c.cmd))
			for i, a := range c.cmd {
				cmd[i] = strings.ReplaceAll(a, base, url)
			}
			want := "hello from upstream /" + c.name
			prefix := "/" + c.name
			if c.name == "git" {
				want, prefix = "cloned through sluice", "/demo.git/"
			}
			keep := ""
			if strings.HasPrefix(c.name, "node") {
				keep = "NODE_EXTRA_CA_CERTS"
			}
			out, code := w.run(t, "", withoutCAEnv(keep, cmd...)...)
			if code != 0 || !strings.Contains(out, want) {
				t.Fatalf("%s through sluice without CA variables: exit %d, want %q in:\n%s", c.name, code, want, out)
			}
			var n int
			for _, r := range api.Requests() {
				if !strings.HasPrefix(r.Path, prefix) {
					continue
				}
				n++
				if got := r.Header.Get("Authorization"); got != "Bearer "+demoSecret {
					t.Errorf("%s %s reached the upstream without the injected Authorization (got %d bytes)", r.Method, r.Path, len(got))
				}
			}
			if n == 0 {
				t.Fatalf("the upstream recorded no request from %s", c.name)
			}
		})
	}
}
