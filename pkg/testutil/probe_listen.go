package testutil

import (
	"net"
	"os"
	"strings"
	"time"
)

// listenProbe: mode "serve", target "NETWORK|ADDR|MSG|READYFILE". It listens
// on ADDR (tcp4 or tcp6), writes the bound address to READYFILE, accepts one
// connection within 10 s, writes MSG to it and closes it: "ok served
// peer=ADDR" or "error ...".
func listenProbe(mode, target string) (string, bool) {
	if mode != "serve" {
		return "", false
	}
	f := strings.SplitN(target, "|", 4)
	if len(f) != 4 {
		return "error target is not NETWORK|ADDR|MSG|READYFILE", true
	}
	ln, err := net.Listen(f[0], f[1])
	if err != nil {
		return "error listen " + errnoName(err), true
	}
	defer ln.Close()
	if err := os.WriteFile(f[3]+".tmp", []byte(ln.Addr().String()), 0o600); err != nil {
		return "error " + err.Error(), true
	}
	if err := os.Rename(f[3]+".tmp", f[3]); err != nil {
		return "error " + err.Error(), true
	}
	_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
	c, err := ln.Accept()
	if err != nil {
		return "error accept " + errnoName(err), true
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte(f[2])); err != nil {
		return "error write " + errnoName(err), true
	}
	return "ok served peer=" + c.RemoteAddr().String(), true
}
