package testutil

import (
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// fenceProbe: mode "holdconns", target "ADDR|N|FLAGFILE". It opens up to N
// TCP connections to ADDR (counting those that fail), writes
// FLAGFILE.ready (holding the summary below), waits (at most 60 s) for FLAGFILE to exist, then closes
// them: "ok connected=C errors=E".
func fenceProbe(mode, target string) (string, bool) {
	if mode != "holdconns" {
		return "", false
	}
	f := strings.SplitN(target, "|", 3)
	if len(f) != 3 {
		return "error target is not ADDR|N|FLAGFILE", true
	}
	n, err := strconv.Atoi(f[1])
	if err != nil {
		return "error bad N", true
	}
	var conns []net.Conn
	errs := 0
	first := ""
	for i := 0; i < n; i++ {
		c, err := net.DialTimeout("tcp", f[0], 5*time.Second)
		if err != nil {
			if errs == 0 {
				first = " firsterr=" + strings.ReplaceAll(errnoName(err), " ", "_")
			}
			errs++ // a connection reset at a fence fails here
			continue
		}
		conns = append(conns, c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	summary := "connected=" + strconv.Itoa(len(conns)) + " errors=" + strconv.Itoa(errs) + first
	if err := os.WriteFile(f[2]+".ready", []byte(summary), 0o644); err != nil {
		return "error " + err.Error(), true
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(f[2]); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return "ok " + summary, true
}
