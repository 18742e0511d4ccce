package doctor

import (
	"errors"

	"github.com/sluice-dev/sluice/pkg/enforcer"
	"golang.org/x/sys/unix"
)

// checkSplice reports whether spliced connections move their bytes in the
// kernel (sockhash + sk_skb verdict, issue #21) or fall back to the
// user-space splice. The fallback works; it only costs CPU, so it warns.
func checkSplice(env Env) Result {
	probe := env.SpliceProbe
	if probe == nil {
		probe = enforcer.ProbeSplice
	}
	err := probe()
	switch {
	case err == nil:
		return Result{Check: "kernel splice", Status: OK, Detail: "spliced connections move their bytes in the kernel (sockhash, sk_skb verdict)"}
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return Result{Check: "kernel splice", Status: Warn, Detail: "spliced connections fall back to the user-space splice: " + err.Error(),
			Fix: "run the daemon as root (or with CAP_BPF and CAP_NET_ADMIN)"}
	default:
		return Result{Check: "kernel splice", Status: Warn, Detail: "spliced connections fall back to the user-space splice: " + err.Error(),
			Fix: "use Linux 5.13 or later with CONFIG_BPF_STREAM_PARSER=y (sockhash and sk_skb verdict programs)"}
	}
}
