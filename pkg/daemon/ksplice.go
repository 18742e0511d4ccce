package daemon

import (
	"log/slog"
	"net"
	"os"
	"sync"

	"github.com/sluice-dev/sluice/pkg/enforcer"
	"github.com/sluice-dev/sluice/pkg/proxy"
)

// One kernel splicer per process (its maps serve every sandbox), loaded on
// first use and kept for the process's life.
var (
	ksOnce sync.Once
	ks     *enforcer.Splicer
	ksErr  error
)

// kernelSplicer returns the process's kernel splicer when
// SLUICE_KERNEL_SPLICE=1, or nil (the proxy splices in user space, faster
// on the kernels measured: pkg/enforcer/PERF.md) otherwise or when the
// kernel lacks a feature (`sluice doctor` says which).
func kernelSplicer(log *slog.Logger) proxy.KernelSplicer {
	if os.Getenv("SLUICE_KERNEL_SPLICE") != "1" {
		return nil
	}
	ksOnce.Do(func() { ks, ksErr = enforcer.NewSplicer() })
	if ksErr != nil {
		log.Info("kernel splice unavailable: spliced connections use the user-space splice", "err", ksErr)
		return nil
	}
	return splicer{ks}
}

type splicer struct{ s *enforcer.Splicer }

func (k splicer) Add(client, up *net.TCPConn) (proxy.SplicedPair, error) {
	p, err := k.s.Add(client, up)
	if err != nil {
		return nil, err
	}
	return p, nil
}
