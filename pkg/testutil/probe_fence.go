package testutil

import (
	"crypto/tls"
	"crypto/x509"
	"io"
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

// headsProbe: mode "holdheads", target "ADDR|SNI|N|PAD|FLAGFILE". It opens
// N TLS connections to ADDR (roots from SSL_CERT_FILE), sends on each an
// unfinished request head carrying PAD bytes of padding, writes
// FLAGFILE.ready ("sent=S errors=E"), waits (at most 60 s) for FLAGFILE,
// then closes them: "ok sent=S errors=E".
func headsProbe(mode, target string) (string, bool) {
	if mode != "holdheads" {
		return "", false
	}
	f := strings.SplitN(target, "|", 5)
	if len(f) != 5 {
		return "error target is not ADDR|SNI|N|PAD|FLAGFILE", true
	}
	n, err1 := strconv.Atoi(f[2])
	pad, err2 := strconv.Atoi(f[3])
	if err1 != nil || err2 != nil {
		return "error bad N or PAD", true
	}
	roots, err := x509.SystemCertPool()
	if err != nil {
		return "error " + err.Error(), true
	}
	head := "GET /slow HTTP/1.1\r\nHost: " + f[1] + "\r\nX-Pad: " + strings.Repeat("a", pad)
	var conns []net.Conn
	errs := 0
	for i := 0; i < n; i++ {
		d := &tls.Dialer{Config: &tls.Config{ServerName: f[1], RootCAs: roots, NextProtos: []string{"http/1.1"}}, NetDialer: &net.Dialer{Timeout: 5 * time.Second}}
		c, err := d.Dial("tcp", f[0])
		if err != nil {
			errs++
			continue
		}
		c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, head); err != nil {
			errs++
		}
		conns = append(conns, c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	summary := "sent=" + strconv.Itoa(len(conns)) + " errors=" + strconv.Itoa(errs)
	if err := os.WriteFile(f[4]+".ready", []byte(summary), 0o644); err != nil {
		return "error " + err.Error(), true
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(f[4]); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return "ok " + summary, true
}
