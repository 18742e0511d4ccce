package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/testutil"
)

// Issue 22: per-process rules and policies written from what ran, with
// real clients inside `sluice run`.

// gitWorld serves demo.git (and a plain answer elsewhere) as allowed.test
// and plain.test.
func gitWorld(t *testing.T) (*world, string) {
	w := newWorld(t)
	requireTools(t, "curl", "git")
	repos := t.TempDir()
	if err := os.Chmod(repos, 0o755); err != nil {
		t.Fatal(err)
	}
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
	useAPI(t, w, []string{"allowed.test", "plain.test"}, mux)
	return w, fmt.Sprintf("https://allowed.test:%d", w.api.Port)
}

func writeShapingPolicy(t *testing.T, dir, text string) string {
	t.Helper()
	f := filepath.Join(dir, fmt.Sprintf("policy-%d.yaml", len(text)))
	if err := os.WriteFile(f, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// gitClone is the sandbox command that clones url into dir and prints the
// README.
func gitClone(url, dir string) []string {
	return []string{"env", "GIT_TERMINAL_PROMPT=0", "GIT_CONFIG_NOSYSTEM=1", "sh", "-c",
		`git clone -q "$0" "$1" && cat "$1/README"`, url, dir}
}

// TestProcessesGitOnly: processes: [git] on the git host lets git clone,
// while curl, and a Python process that renamed itself "git" with
// prctl(PR_SET_NAME), are refused at the proxy and reach nothing.
func TestProcessesGitOnly(t *testing.T) {
	t.Parallel()
	w, base := gitWorld(t)
	requireTools(t, "python3")
	pol := writeShapingPolicy(t, w.dir, `version: 1
rules:
  - name: git-host
    hosts: [allowed.test]
    methods: [GET, POST]
    processes: [git]
`)
	out, code := w.run(t, pol, gitClone(base+"/demo.git", filepath.Join(w.dir, "clone"))...)
	if code != 0 || !strings.Contains(out, "cloned through sluice") {
		t.Fatalf("git clone: exit %d:\n%s", code, out)
	}
	var gitExe string
	for _, ev := range w.events(t) {
		if ev.Kind == audit.KindConn && ev.Decision == audit.DecisionIntercept {
			gitExe = ev.Exe
		}
	}
	if !strings.Contains(gitExe, "git") {
		t.Fatalf("the clone's connection was not attributed to git (exe %q)", gitExe)
	}

	out, code = w.run(t, pol, "curl", "-sS", "--max-time", "10", "-o", "/dev/stdout", "-w", "\nstatus=%{http_code}\n", base+"/demo.git/curl-probe")
	if !strings.Contains(out, "status=403") || !strings.Contains(out, "applies only to processes git") || !strings.Contains(out, "curl") {
		t.Fatalf("curl was not refused naming the process: exit %d:\n%s", code, out)
	}

	// A process whose comm is "git" (prctl) but whose executable is Python.
	script := `import ctypes, sys, urllib.request, urllib.error
libc = ctypes.CDLL(None)
libc.prctl(15, b"git", 0, 0, 0)
print("comm=" + open("/proc/self/comm").read().strip())
try:
    urllib.request.urlopen(sys.argv[1], timeout=10)
    print("status=200")
except urllib.error.HTTPError as e:
    print("status=%d" % e.code)
    print(e.read().decode())
`
	out, code = w.run(t, pol, sysPython(t), "-c", script, base+"/demo.git/python-probe")
	if !strings.Contains(out, "comm=git") || !strings.Contains(out, "status=403") || !strings.Contains(out, "python") {
		t.Fatalf("the renamed process was not refused naming its executable: exit %d:\n%s", code, out)
	}
	var sawComm bool
	for _, ev := range w.events(t) {
		if ev.Kind == audit.KindHTTP && ev.Comm == "git" && strings.Contains(ev.Exe, "python") && ev.Decision == audit.DecisionDeny {
			sawComm = true
		}
	}
	if !sawComm {
		t.Fatal("no refused request with comm git and a python executable in the audit log")
	}
	for _, r := range w.api.Requests() {
		if strings.HasSuffix(r.Path, "-probe") {
			t.Fatalf("the upstream received %s %s from a refused process", r.Method, r.Path)
		}
	}
}

// TestPolicySuggestRoundTrip: a workload run under mode: audit, a policy
// suggested from its log, and the same workload under that policy in
// enforce mode: it succeeds, and a host it never used is refused.
func TestPolicySuggestRoundTrip(t *testing.T) {
	t.Parallel()
	w, base := gitWorld(t)
	plain := fmt.Sprintf("https://plain.test:%d", w.api.Port)
	workload := func(clone string) []string {
		return []string{"sh", "-c", `set -e
for i in 1 2 3 4; do curl -sS --max-time 10 "$0/v1/items/$i"; done
curl -sS --max-time 10 --http1.1 -X POST -d x=1 "$0/v1/upload"
GIT_TERMINAL_PROMPT=0 GIT_CONFIG_NOSYSTEM=1 git clone -q "$1/demo.git" "$2" && cat "$2/README"`, base, plain, clone}
	}
	auditPol := writeShapingPolicy(t, w.dir, "version: 1\nmode: audit\nrules: []\n")
	out, code := w.run(t, auditPol, workload(filepath.Join(w.dir, "clone1"))...)
	if code != 0 || !strings.Contains(out, "hello from upstream /v1/items/4") || !strings.Contains(out, "cloned through sluice") {
		t.Fatalf("workload under mode: audit: exit %d:\n%s", code, out)
	}
	auditLog := w.auth

	suggested := filepath.Join(w.dir, "suggested.yaml")
	code, sout, serr := runSluice(t, "policy", "suggest", "--from", auditLog, "--sandbox", "e2e", "-o", suggested)
	if code != 0 {
		t.Fatalf("policy suggest: exit %d: %s%s", code, sout, serr)
	}
	text, err := os.ReadFile(suggested)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("suggested policy:\n%s", text)
	for _, want := range []string{`hosts: ["allowed.test"]`, `"/v1/items/*"`, `methods: [GET, POST]`, `hosts: ["plain.test"]`, `processes: ["/usr/lib/git-core/git-remote-http"]`} {
		if !strings.Contains(string(text), want) {
			t.Errorf("the suggestion lacks %s", want)
		}
	}
	if code, out, errs := runSluice(t, "policy", "check", suggested); code != 0 {
		t.Fatalf("policy check refuses the suggestion: %s%s", out, errs)
	}
	// Replayed against the log, the suggestion allows everything the audit
	// policy let through.
	code, diff, derr := runSluice(t, "policy", "diff", auditPol, suggested, "--audit", auditLog, "--json")
	if code != 0 || strings.Contains(diff, "newly_denied") {
		t.Fatalf("policy diff: exit %d: %s%s", code, diff, derr)
	}

	out, code = w.run(t, suggested, workload(filepath.Join(w.dir, "clone2"))...)
	if code != 0 || !strings.Contains(out, "hello from upstream /v1/items/4") || !strings.Contains(out, "cloned through sluice") {
		t.Fatalf("the same workload under the suggestion: exit %d:\n%s", code, out)
	}
	for _, ev := range w.events(t) {
		if ev.Decision == audit.DecisionDeny || ev.Decision == audit.DecisionWouldDeny {
			t.Errorf("refused under the suggestion: %+v", ev)
		}
	}
	// A host the workload never used.
	out, code = w.run(t, suggested, "curl", "-sS", "--max-time", "10", fmt.Sprintf("https://forbidden.test:%d/never", w.api.Port))
	if code == 0 {
		t.Fatalf("a host the workload never used was reached:\n%s", out)
	}
	// And a path the workload never used, on a host it did.
	out, _ = w.run(t, suggested, "curl", "-sS", "--max-time", "10", "-w", "\nstatus=%{http_code}\n", base+"/admin/never")
	if !strings.Contains(out, "status=403") {
		t.Fatalf("a path the workload never used was allowed:\n%s", out)
	}
	for _, r := range w.api.Requests() {
		if strings.HasSuffix(r.Path, "/never") {
			t.Fatalf("the upstream received %s %s", r.Method, r.Path)
		}
	}
}

// TestRequestShapingGiBThroughRun: a 1 GiB upload from curl inside `sluice
// run` through a redact_body rule streams: every SSN reaches the upstream
// as [ssn], and the sluice process (which hosts the proxy) keeps a bounded
// resident set while it does.
func TestRequestShapingGiBThroughRun(t *testing.T) {
	if testing.Short() {
		t.Skip("1 GiB upload; skipped with -short")
	}
	// Parallel: what it measures is its own sluice process's peak RSS, and
	// it has no time bound but curl's 600 s; serial, its 1 GiB (10-27 s)
	// held up every parallel test of the package.
	t.Parallel()
	w := newWorld(t)
	requireTools(t, "curl", "python3")
	const blocks = 1024 // of 1 MiB, each ending with one SSN
	var total, marks, leaks atomic.Int64
	useAPI(t, w, []string{"allowed.test"}, http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 256<<10)
		var carry []byte
		for {
			n, err := r.Body.Read(buf)
			total.Add(int64(n))
			// Count across reads: keep the last bytes of the previous one.
			chunk := append(carry, buf[:n]...)
			marks.Add(int64(bytes.Count(chunk, []byte("[ssn]")) - bytes.Count(carry, []byte("[ssn]"))))
			leaks.Add(int64(bytes.Count(chunk, []byte("6789")) - bytes.Count(carry, []byte("6789"))))
			carry = append(carry[:0], chunk[max(0, len(chunk)-8):]...)
			if err != nil {
				break
			}
		}
		fmt.Fprintf(rw, "received %d\n", total.Load())
	}))
	pol := writeShapingPolicy(t, w.dir, `version: 1
rules:
  - name: upload
    hosts: [allowed.test]
    request:
      max_body: 2GiB
      redact_body:
        - {pattern: '\b\d{3}-\d{2}-\d{4}\b', with: "[ssn]"}
`)
	gen := `import sys
line = b"lorem ipsum dolor sit amet, consectetur adipiscing elit. "
blk = (line * (1048576 // len(line) + 1))[:1048576 - 13] + b" 123-45-6789 "
out = sys.stdout.buffer
for _ in range(int(sys.argv[1])):
    out.write(blk)
`
	script := sysPython(t) + ` -c "$0" "$1" | curl -sS --max-time 600 --http1.1 -T - "$2"`
	url := fmt.Sprintf("https://allowed.test:%d/upload", w.api.Port)
	cmd := exec.Command(sluiceBin(t), w.runArgs(pol, nil, "sh", "-c", script, gen, fmt.Sprint(blocks), url)...)
	cmd.Env = append(os.Environ(), "DEMO_TOKEN="+demoSecret)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var peak uint64 // the sluice process's VmHWM, sampled until it exits
	var err error
	for running := true; running; {
		select {
		case err = <-done:
			running = false
		case <-time.After(50 * time.Millisecond):
			if v := procStatusKB(cmd.Process.Pid, "VmHWM"); v > peak {
				peak = v
			}
		}
	}
	if err != nil {
		t.Fatalf("sluice run: %v\n%s", err, out.String())
	}
	want := int64(blocks)*(1<<20) - int64(blocks)*int64(len("123-45-6789")-len("[ssn]"))
	if total.Load() != want || marks.Load() != blocks || leaks.Load() != 0 {
		t.Fatalf("upstream received %d bytes (want %d), %d [ssn] (want %d), %d unredacted:\n%s",
			total.Load(), want, marks.Load(), blocks, leaks.Load(), out.String())
	}
	t.Logf("1 GiB through sluice run in %v; sluice peak RSS %d MiB", time.Since(start).Round(time.Millisecond), peak>>10)
	if peak == 0 {
		t.Fatal("could not sample the sluice process's memory")
	}
	if peak > 200<<10 {
		t.Fatalf("sluice peak RSS %d MiB for a 1 GiB upload: the body was not streamed", peak>>10)
	}
	var redacted int
	for _, ev := range w.events(t) {
		redacted += ev.Redacted[`\b\d{3}-\d{2}-\d{4}\b`]
	}
	if redacted != blocks {
		t.Fatalf("the audit log counts %d redactions, want %d", redacted, blocks)
	}
}

// procStatusKB reads one "Name: N kB" field of /proc/PID/status (0 if
// unknown).
func procStatusKB(pid int, field string) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			v, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return v
		}
	}
	return 0
}

// sysPython is the system's python3 (a version manager's shim in root's
// home may not run as the sandbox's user).
func sysPython(t *testing.T) string {
	if _, err := os.Stat("/usr/bin/python3"); err == nil {
		return "/usr/bin/python3"
	}
	p, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 is not installed: apt-get install python3")
	}
	return p
}

// TestRequestShapingCurl: curl inside `sluice run` against a request:
// rule: an upload over max_body gets 413 and a private key 403, neither
// reaching the upstream; an SSN arrives as [ssn].
func TestRequestShapingCurl(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	requireTools(t, "curl")
	var bodies []string
	var mu sync.Mutex
	useAPI(t, w, []string{"allowed.test"}, http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, string(b))
		mu.Unlock()
		fmt.Fprintf(rw, "got %d bytes\n", len(b))
	}))
	pol := writeShapingPolicy(t, w.dir, `version: 1
rules:
  - name: upload
    hosts: [allowed.test]
    request:
      max_body: 1KiB
      deny_body: ["-----BEGIN [A-Z ]*PRIVATE KEY-----"]
      redact_body:
        - {pattern: '\b\d{3}-\d{2}-\d{4}\b', with: "[ssn]"}
      json: true
`)
	url := fmt.Sprintf("https://allowed.test:%d/upload", w.api.Port)
	script := `set -e
u="$0"
head -c 2000 /dev/zero | tr '\0' a | curl -sS --max-time 10 -o /dev/null -w "big=%{http_code}\n" --data-binary @- "$u"
printf -- '-----BEGIN OPENSSH PRIVATE KEY-----\nMIIEpQIBAAKCAQEAzz\n' | curl -sS --max-time 10 -o /dev/null -w "key=%{http_code}\n" --data-binary @- "$u"
curl -sS --max-time 10 -o /dev/null -w "json=%{http_code}\n" -H 'Content-Type: application/json' --data-binary '{"a":' "$u"
curl -sS --max-time 10 -w "ssn=%{http_code}\n" -H 'Content-Type: application/json' --data-binary '{"ssn":"123-45-6789"}' "$u"`
	out, code := w.run(t, pol, "sh", "-c", script, url)
	for _, want := range []string{"big=413", "key=403", "json=400", "ssn=200"} {
		if !strings.Contains(out, want) {
			t.Fatalf("want %s (exit %d):\n%s", want, code, out)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(bodies) != 1 || bodies[0] != `{"ssn":"[ssn]"}` {
		t.Fatalf("the upstream received %q, want only the redacted JSON", bodies)
	}
	var redactions int
	for _, ev := range w.events(t) {
		if strings.Contains(fmt.Sprint(ev), "123-45-6789") || strings.Contains(fmt.Sprint(ev), "MIIEpQ") {
			t.Fatalf("an event holds a body value: %+v", ev)
		}
		redactions += ev.Redacted[`\b\d{3}-\d{2}-\d{4}\b`]
	}
	if redactions != 1 {
		t.Fatalf("the audit log counts %d redactions, want 1", redactions)
	}
}
