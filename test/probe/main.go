// Command probe is the network probe of the privileged tests
// (pkg/testutil), built without -race. testutil.RunProbe starts it inside
// a sandbox cgroup when $SLUICE_PROBE_BIN names it (make test does): a
// -race test binary, the fallback, takes over a second to start on a
// loaded 2-core machine, and the tests start hundreds of probes.
//
// Usage: SLUICE_TEST_PROBE=MODE probe TARGET
package main

import (
	"fmt"
	"os"

	"github.com/sluice-dev/sluice/pkg/testutil"
)

func main() {
	testutil.MaybeRunProbe()
	fmt.Fprintln(os.Stderr, "probe: SLUICE_TEST_PROBE is not set")
	os.Exit(2)
}
