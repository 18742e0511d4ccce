package doctor

import (
	"errors"

	"github.com/sluice-dev/sluice/pkg/enforcer"
	"golang.org/x/sys/unix"
)

// checkSplice reports whether spliced connections can move their bytes in
// the kernel (sockhash + sk_skb verdict, issue #21) when SLUICE_KERNEL_SPLICE=1
// asks for it. The user-space splice is the default (faster on the kernels
// measured, pkg/enforcer/PERF.md); a kernel without the feature only loses
// the option, so it warns.
func checkSplice(env Env) Result {
	probe := env.SpliceProbe
	if probe == nil {
		probe = enforcer.ProbeSplice
	}
	err := probe()
	switch {
	case err == nil:
		return Result{Check: "kernel splice", Status: OK, Detail: "available: with SLUICE_KERNEL_SPLICE=1 spliced connections move their bytes in the kernel (sockhash, sk_skb verdict); the default user-space splice is faster for bulk and keep-alive here (pkg/enforcer/PERF.md)"}
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return Result{Check: "kernel splice", Status: Warn, Detail: "SLUICE_KERNEL_SPLICE=1 would fall back to the user-space splice: " + err.Error(),
			Fix: "run the daemon as root (or with CAP_BPF and CAP_NET_ADMIN)"}
	default:
		return Result{Check: "kernel splice", Status: Warn, Detail: "SLUICE_KERNEL_SPLICE=1 would fall back to the user-space splice: " + err.Error(),
			Fix: "use Linux 5.13 or later with CONFIG_BPF_STREAM_PARSER=y (sockhash and sk_skb verdict programs)"}
	}
}
