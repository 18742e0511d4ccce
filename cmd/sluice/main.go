// Command sluice enforces egress policy for sandboxed processes.
package main

import (
	"os"

	"github.com/sluice-dev/sluice/pkg/sandbox"
)

func main() {
	sandbox.MaybeInit() // `sluice run`'s init, when re-executed as one
	os.Exit(execute(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
