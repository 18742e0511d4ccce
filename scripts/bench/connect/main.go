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
		}
		per = append(per, float64(time.Since(start).Nanoseconds())/float64(*n))
	}
	sort.Float64s(per)
	_ = json.NewEncoder(os.Stdout).Encode(map[string]any{"ns_per_connect": per[len(per)/2], "rounds": per})
}
