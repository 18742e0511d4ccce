// Command upstream serves the offline demo's loopback world: an
// authoritative DNS server for made-up names, an HTTPS "API" with its own
// CA, and a loopback TCP listener that must never be reached. It writes the
// addresses as shell variables to the file given as its argument and runs
// until killed.
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/sluice-dev/sluice/pkg/testutil"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: upstream ENVFILE")
		os.Exit(2)
	}
	envFile := os.Args[1]
	dir := filepath.Dir(envFile)
	dnsSrv, err := testutil.StartDNS(map[string][]string{
		"allowed.test":   {"127.0.0.1"},
		"plain.test":     {"127.0.0.1"},
		"forbidden.test": {"127.0.0.1"},
	})
	check(err)
	api, err := testutil.StartHTTPS(dir, []string{"allowed.test", "plain.test"}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth := "absent"
		if v := r.Header.Get("Authorization"); strings.HasPrefix(v, "Bearer ") && len(v) > len("Bearer ") {
			auth = "present (Bearer, value withheld)"
		}
		fmt.Fprintf(w, "hello from the loopback API: %s %s, Authorization header %s\n", r.Method, r.URL.Path, auth)
	}))
	check(err)
	// Not 127.0.0.1: that address is in the sandbox's allowlist once
	// allowed.test resolved to it, and would then reach the proxy (403).
	forbidden, err := net.Listen("tcp4", "127.0.0.2:0")
	check(err)
	var hits atomic.Int64
	go func() {
		for {
			c, err := forbidden.Accept()
			if err != nil {
				return
			}
			hits.Add(1)
			c.Close()
		}
	}()
	env := fmt.Sprintf("DNS_ADDR=%s\nAPI_PORT=%d\nUPSTREAM_CA=%s\nFORBIDDEN_ADDR=%s\n",
		dnsSrv.Addr, api.Port, api.CAFile, forbidden.Addr())
	check(os.WriteFile(envFile+".tmp", []byte(env), 0o644))
	check(os.Rename(envFile+".tmp", envFile))

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	fmt.Fprintf(os.Stderr, "upstream: forbidden listener received %d connections; DNS queries: %s\n", hits.Load(), strings.Join(dnsSrv.Queries(), " "))
	if hits.Load() != 0 || dnsSrv.Received("forbidden.test") {
		fmt.Fprintln(os.Stderr, "upstream: FAIL: something forbidden got through")
		os.Exit(1)
	}
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "upstream:", err)
		os.Exit(1)
	}
}
