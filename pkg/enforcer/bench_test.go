package enforcer

import (
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/sluice-dev/sluice/pkg/testutil"
)

// benchSandbox registers a sandbox id without a cgroup (map-level
// benchmarks need no programs attached).
func benchSandbox(b *testing.B) *Sandbox {
	testutil.RequirePrivileged(b)
	e, err := Open(Config{PinDir: testutil.PinDir(b)}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { e.Close() })
	return e.Sandbox("", 4242)
}

// BenchmarkOriginalDst is the proxy's per-connection lookup: one
// LookupAndDelete on the LRU hash that sockops filled.
func BenchmarkOriginalDst(b *testing.B) {
	s := benchSandbox(b)
	client := netip.MustParseAddrPort("127.0.0.1:40000")
	k := sluiceOrigKey{Sandbox: s.id, Addr: addrKey(client.Addr()), Port: client.Port(), Proto: ProtoTCP}
	v := sluiceOrig{Sandbox: s.id, Port: 443, Redirected: 1}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		if err := s.e.objs.OrigByTuple.Update(&k, &v, ebpf.UpdateAny); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := s.OriginalDst(client); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAllow is the resolver's per-answer allowlist write.
func BenchmarkAllow(b *testing.B) {
	s := benchSandbox(b)
	addr := netip.MustParseAddr("10.1.2.3")
	until := time.Now().Add(time.Minute)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if err := s.Allow(addr, until, false); err != nil {
			b.Fatal(err)
		}
	}
}
