// Command connect measures the cost of connect(2) to a TCP address: it
// opens and closes N connections and prints the median per-connect time of
// R rounds as JSON. scripts/bench/run.sh runs it outside and inside a
// sandbox (`sluice run`) and reports the ratio.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"sort"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	serve := flag.Bool("serve", false, "accept and close connections on HOST:PORT; print the address")
	n := flag.Int("n", 5000, "connections per round")
	rounds := flag.Int("rounds", 5, "rounds (the median is reported)")
	mix := flag.Bool("mix", false, "each iteration also connects an IPv6 socket (v4-mapped) and sends a DNS query to 127.0.0.1:53 and [::1]:53 (UDP) and reads the answer, so every hook of a sandbox runs (for per-program costs)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: connect [-n N] [-rounds R] HOST:PORT")
		os.Exit(2)
	}
	if *serve {
		ln, err := net.Listen("tcp4", flag.Arg(0))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(ln.Addr())
		for {
			c, err := ln.Accept()
			if err != nil {
				os.Exit(0)
			}
			c.Close()
		}
	}
	addr, err := net.ResolveTCPAddr("tcp4", flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	sa := &unix.SockaddrInet4{Port: addr.Port}
	copy(sa.Addr[:], addr.IP.To4())
	var per []float64
	for r := 0; r < *rounds; r++ {
		start := time.Now()
		for i := 0; i < *n; i++ {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				fmt.Fprintln(os.Stderr, "socket:", err)
				os.Exit(1)
			}
			if err := unix.Connect(fd, sa); err != nil {
				fmt.Fprintln(os.Stderr, "connect:", err)
				os.Exit(1)
			}
			// RST on close keeps TIME_WAIT from piling up.
			_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
			unix.Close(fd)
			if *mix {
				mixed(addr)
			}
		}
		per = append(per, float64(time.Since(start).Nanoseconds())/float64(*n))
	}
	sort.Float64s(per)
	_ = json.NewEncoder(os.Stdout).Encode(map[string]any{"ns_per_connect": per[len(per)/2], "rounds": per})
}

// query is a DNS query for mix.bench.invalid (A), answered NXDOMAIN by a
// sandbox's resolver.
var query = []byte{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0,
	3, 'm', 'i', 'x', 5, 'b', 'e', 'n', 'c', 'h', 7, 'i', 'n', 'v', 'a', 'l', 'i', 'd', 0, 0, 1, 0, 1}

// mixed runs the other hooks once: connect6 (v4-mapped, so the IPv4
// listener answers), sendmsg4/recvmsg4 and sendmsg6/recvmsg6.
func mixed(addr *net.TCPAddr) {
	sa6 := &unix.SockaddrInet6{Port: addr.Port}
	copy(sa6.Addr[:], addr.IP.To16()) // ::ffff:a.b.c.d
	if fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err == nil {
		if err := unix.Connect(fd, sa6); err != nil {
			fmt.Fprintln(os.Stderr, "connect6:", err)
			os.Exit(1)
		}
		_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		unix.Close(fd)
	}
	buf := make([]byte, 512)
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		fd, err := unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			continue
		}
		_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1})
		var to unix.Sockaddr = &unix.SockaddrInet4{Port: 53, Addr: [4]byte{127, 0, 0, 1}}
		if fam == unix.AF_INET6 {
			to = &unix.SockaddrInet6{Port: 53, Addr: [16]byte{15: 1}}
		}
		if err := unix.Sendto(fd, query, 0, to); err == nil {
			_, _, _ = unix.Recvfrom(fd, buf, 0)
		}
		unix.Close(fd)
	}
}
