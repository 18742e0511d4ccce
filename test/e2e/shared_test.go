package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/testutil"
)

// Sandboxes of the host network namespace share the daemon's proxy
// listener and IPv6 resolver socket (issue #21). Each still gets its own
// policy; DNS over TCP and over IPv6 UDP is answered under the sender's
// policy; a process outside every sandbox that connects to the shared port
// is served nothing and reaches no upstream; and the daemon holds one
// descriptor per sandbox.
func TestDaemonSharedListener(t *testing.T) {
	t.Parallel()
	w := twoHostWorld(t)
	d := startDaemon(t, w, daemonOpts{})
	socks0 := sockets(d.cmd.Process.Pid)
	pa := writePolicy(t, w.dir, "a.yaml", "version: 1\nrules:\n  - name: a\n    hosts: [a.test]\n")
	pb := writePolicy(t, w.dir, "b.yaml", "version: 1\nrules:\n  - name: b\n    hosts: [b.test]\n")
	type info struct {
		ProxyPort uint16 `json:"proxy_port"`
		DNSPort   uint16 `json:"dns_port"`
	}
	var infos []info
	var cgs []string
	for _, c := range []struct{ name, pol string }{{"sha", pa}, {"shb", pb}} {
		cg, pid := sandboxProc(t, "")
		out, err := d.cli("attach", "--policy", c.pol, "--pid", fmt.Sprint(pid), "--name", c.name, "--json")
		if err != nil {
			t.Fatalf("attach %s: %v\n%s", c.name, err, out)
		}
		var in info
		if err := json.Unmarshal([]byte(out), &in); err != nil {
			t.Fatalf("attach %s: %v\n%s", c.name, err, out)
		}
		infos, cgs = append(infos, in), append(cgs, cg)
	}
	if infos[0].ProxyPort != infos[1].ProxyPort || infos[0].DNSPort == infos[1].DNSPort {
		t.Fatalf("want one shared proxy port and a resolver port each: %+v", infos)
	}
	// Three shared sockets (proxy on 127.0.0.1 and ::1, resolver on ::1)
	// and one per sandbox: five new ones. A socket the daemon opens for a
	// moment (a probe, an upstream query) may be there at one reading:
	// wait, bounded, for the count without it.
	newSockets := func() []string {
		var out []string
		for _, l := range sockets(d.cmd.Process.Pid) {
			if !slices.Contains(socks0, l) {
				out = append(out, l)
			}
		}
		return out
	}
	last := ""
	testutil.WaitFor(t, "five new TCP/UDP sockets in the daemon", func() bool {
		n := newSockets()
		if now := fmt.Sprint(n); len(n) != 5 && now != last {
			t.Logf("new TCP/UDP sockets: %s (before: %v)", now, socks0)
			last = now
		}
		return len(n) == 5
	})
	for i, c := range []struct{ own, other string }{{"a.test", "b.test"}, {"b.test", "a.test"}} {
		if out, err := inSandbox(t, cgs[i], "", curlArgs(w, c.own)...); err != nil || !strings.Contains(out, "hello from upstream") {
			t.Errorf("sandbox %d curl %s: %v\n%s", i, c.own, err, out)
		}
		if out, err := inSandbox(t, cgs[i], "", curlArgs(w, c.other)...); err == nil {
			t.Errorf("sandbox %d reached %s, which only the other sandbox's policy allows:\n%s", i, c.other, out)
		}
		// DNS over TCP and over IPv6 UDP, each under this sandbox's policy.
		for _, dig := range [][]string{
			{"dig", "+tcp", "+tries=1", "+time=5", "@192.0.2.53"},
			{"dig", "+notcp", "+tries=1", "+time=5", "@2001:db8::53"},
		} {
			out, err := inSandbox(t, cgs[i], "", append(dig, "+short", c.own, "A")...)
			if err != nil || strings.TrimSpace(out) != "127.0.0.1" {
				t.Errorf("sandbox %d %v %s: %v\n%s", i, dig[:2], c.own, err, out)
			}
			out, _ = inSandbox(t, cgs[i], "", append(dig, c.other, "A")...)
			if strings.Contains(out, "ANSWER: 1") || !strings.Contains(out, "status: ") || strings.Contains(out, "status: NOERROR") {
				t.Errorf("sandbox %d %v %s, denied by its policy: want a refusal\n%s", i, dig[:2], c.other, out)
			}
		}
	}
	// A process outside every sandbox connects to the shared port and asks
	// for an allowed host: no record names it, so it is served nothing.
	before := len(w.api.Requests())
	for _, addr := range []string{"127.0.0.1", "::1"} {
		c, err := net.Dial("tcp", net.JoinHostPort(addr, fmt.Sprint(infos[0].ProxyPort)))
		if err != nil {
			t.Fatalf("dial the shared proxy on %s: %v", addr, err)
		}
		fmt.Fprintf(c, "GET /x HTTP/1.1\r\nHost: a.test:%d\r\n\r\n", w.api.Port)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(c)
		c.Close()
		if len(got) != 0 || (err != nil && !strings.Contains(err.Error(), "reset")) {
			t.Errorf("outside process on %s: got %q, %v; want the connection closed unserved", addr, got, err)
		}
	}
	if n := len(w.api.Requests()) - before; n != 0 {
		t.Fatalf("the upstream received %d requests from outside every sandbox", n)
	}
	// Detaching both closes the shared listeners: nothing is left.
	for _, name := range []string{"sha", "shb"} {
		if out, err := d.cli("detach", name); err != nil {
			t.Fatalf("detach %s: %v\n%s", name, err, out)
		}
	}
	testutil.WaitFor(t, "the shared listener to close", func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", infos[0].ProxyPort))
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	if _, err := os.Stat("/proc/" + fmt.Sprint(d.cmd.Process.Pid)); err != nil {
		t.Fatalf("the daemon died: %v\n%s", err, d.log)
	}
}

// sockets lists process pid's TCP and UDP socket descriptors. The
// descriptors are listed first and the kernel's socket tables read after,
// so a socket opened and closed in between (a control connection, a
// netlink query) is not counted.
func sockets(pid int) []string {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	var links []string
	for _, e := range ents {
		if l, _ := os.Readlink(filepath.Join(dir, e.Name())); strings.HasPrefix(l, "socket:") {
			links = append(links, l)
		}
	}
	ip := map[string]bool{}
	for _, table := range []string{"tcp", "tcp6", "udp", "udp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			if f := strings.Fields(line); len(f) >= 10 {
				ip["socket:["+f[9]+"]"] = true
			}
		}
	}
	var out []string
	for _, l := range links {
		if ip[l] {
			out = append(out, l)
		}
	}
	return out
}
