package enforcer

import (
	"io"
	"log/slog"
	"net/netip"
	"sort"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/testutil"
)

// allowKeysOf walks the kernel map (not the index) for one sandbox.
func allowKeysOf(e *Enforcer, id uint64) []string {
	var out []string
	var k sluiceAllowKey
	var v sluiceAllowVal
	it := e.objs.Allow.Iterate()
	for it.Next(&k, &v) {
		if sandboxOf(&k) == id {
			p := netip.PrefixFrom(netip.AddrFrom16(k.Addr).Unmap(), int(k.Prefixlen)-64)
			if netip.AddrFrom16(k.Addr).Is4In6() {
				p = netip.PrefixFrom(netip.AddrFrom16(k.Addr).Unmap(), int(k.Prefixlen)-64-96)
			}
			out = append(out, p.String())
		}
	}
	sort.Strings(out)
	return out
}

// TestAllowIndexAcrossRestart: a second process (a restarted daemon) that
// re-adopts a sandbox replaces the static entries the first one wrote, and
// its Detach removes every entry, DNS-learned ones included, although its
// index started empty. A fresh sandbox's static entries are replaced too.
func TestAllowIndexAcrossRestart(t *testing.T) {
	testutil.RequirePrivileged(t)
	pin := testutil.PinDir(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	e1, err := Open(Config{PinDir: pin}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e1.Close() })
	cg, id := testutil.Cgroup(t)
	cfg := SandboxConfig{ProxyPort: 1, DNSPort: 2}
	sb1, err := e1.Attach(cg, id, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sb1.Detach() })
	st := func(cidrs ...string) []Static {
		var out []Static
		for _, c := range cidrs {
			out = append(out, Static{Prefix: netip.MustParsePrefix(c), Direct: true})
		}
		return out
	}
	if err := sb1.SetStatic(st("10.0.0.0/8", "192.0.2.0/24")); err != nil {
		t.Fatal(err)
	}
	if err := sb1.SetStatic(st("10.0.0.0/8", "198.51.100.0/24")); err != nil {
		t.Fatal(err)
	}
	if err := sb1.Allow(netip.MustParseAddr("203.0.113.7"), time.Now().Add(time.Hour), false); err != nil {
		t.Fatal(err)
	}
	if got, want := allowKeysOf(e1, id), []string{"10.0.0.0/8", "198.51.100.0/24", "203.0.113.7/32"}; !equal(got, want) {
		t.Fatalf("first process: entries %v, want %v", got, want)
	}

	// A second process on the same pins re-adopts the sandbox.
	e2, err := Open(Config{PinDir: pin}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e2.Close() })
	sb2, err := e2.Attach(cg, id, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := sb2.SetStatic(st("172.16.0.0/12")); err != nil {
		t.Fatal(err)
	}
	if got, want := allowKeysOf(e2, id), []string{"172.16.0.0/12", "203.0.113.7/32"}; !equal(got, want) {
		t.Fatalf("after re-adoption: entries %v, want %v (old static entries must go, DNS ones stay)", got, want)
	}
	if err := sb2.Revoke(netip.MustParseAddr("203.0.113.7")); err != nil {
		t.Fatal(err)
	}
	if err := sb2.Allow(netip.MustParseAddr("203.0.113.8"), time.Now().Add(time.Hour), false); err != nil {
		t.Fatal(err)
	}
	// A handle of a third process, without the index (as for a gone
	// sandbox of an earlier daemon), detaches everything too.
	e3, err := Open(Config{PinDir: pin}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e3.Close() })
	if err := e3.Sandbox(cg, id).Detach(); err != nil {
		t.Fatal(err)
	}
	if got := allowKeysOf(e2, id); len(got) != 0 {
		t.Fatalf("after detach: entries left %v", got)
	}
	if e2.Registered(id) {
		t.Fatal("still registered after detach")
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
