// Command fleetclient is the static client the container tests put into
// their images (no libc, no shell needed). It prints one line per action:
// "ok ..." or "error ...".
//
//	fleetclient tcp ADDR            connect, read a line
//	fleetclient dns NAME            resolve with the Go resolver (/etc/resolv.conf)
//	fleetclient https URL           GET with the system trust store
//	fleetclient first ADDR... NAME  tcp to each ADDR and dns NAME, then sleep
//	fleetclient once ADDR... NAME   the same without the sleep
//	fleetclient loop ADDR DURATION [STOPFILE]
//	                                connect every 20ms until DURATION has passed
//	                                or STOPFILE exists, then print counts
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"
)

func tcp(addr string) string {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		if errors.Is(err, syscall.EPERM) {
			return "error EPERM"
		}
		return "error " + err.Error()
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 64)
	n, _ := c.Read(buf)
	return "ok " + strings.TrimSpace(string(buf[:n]))
}

func dns(name string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupHost(ctx, name)
	if err != nil {
		var de *net.DNSError
		if errors.As(err, &de) && de.IsNotFound {
			return "error NXDOMAIN"
		}
		return "error " + err.Error()
	}
	return "ok " + strings.Join(addrs, ",")
}

func get(url string) string {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "error " + err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
	return fmt.Sprintf("ok %d %s", resp.StatusCode, strings.TrimSpace(string(body)))
}

func main() {
	if len(os.Args) < 3 {
		fmt.Println("error usage")
		os.Exit(2)
	}
	a := os.Args[2:]
	switch os.Args[1] {
	case "tcp":
		fmt.Println(tcp(a[0]))
	case "dns":
		fmt.Println(dns(a[0]))
	case "https":
		fmt.Println(get(a[0]))
	case "first", "once":
		for _, addr := range a[:len(a)-1] {
			fmt.Println("tcp", addr, tcp(addr))
		}
		fmt.Println("dns", a[len(a)-1], dns(a[len(a)-1]))
		fmt.Println("done")
		if os.Args[1] == "first" {
			time.Sleep(time.Hour)
		}
	case "loop":
		d, err := time.ParseDuration(a[1])
		if err != nil {
			fmt.Println("error", err)
			os.Exit(2)
		}
		stopped := func() bool { return false }
		if len(a) > 2 {
			stopped = func() bool { _, err := os.Stat(a[2]); return err == nil }
		}
		counts := map[string]int{}
		for end := time.Now().Add(d); time.Now().Before(end) && !stopped(); time.Sleep(20 * time.Millisecond) {
			r := tcp(a[0])
			if strings.HasPrefix(r, "ok") {
				r = "ok"
			} else if r != "error EPERM" {
				r = "other"
			}
			counts[r]++
		}
		fmt.Printf("loop ok=%d eperm=%d other=%d\n", counts["ok"], counts["error EPERM"], counts["other"])
	default:
		fmt.Println("error unknown mode", os.Args[1])
		os.Exit(2)
	}
}
