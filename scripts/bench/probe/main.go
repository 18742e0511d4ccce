// Command probe is the benchmark's own measuring client, for what the
// packaged load generators do not report well. It runs outside or inside a
// sandbox (`sluice run -- probe ...`) and prints one JSON object.
//
//	probe latency [-n N] [-resolve NAME:ADDR] [-cacert F] URL
//	    N sequential keep-alive HTTP/1.1 GETs after a warm-up; p50/p90/p99
//	    per-request latency in microseconds. One request at a time, so the
//	    figure is the path's own cost, not queueing.
//	probe dns [-c C] [-d D] [-name NAME] SERVER:PORT
//	    C workers each send an A query for NAME and wait for its answer,
//	    for D; answered queries per second (a fallback when dnsperf is not
//	    installed).
//	probe bulk [-resolve NAME:ADDR] [-cacert F] URL
//	    one GET, body discarded; bytes per second.
//	probe cputime FILE CMD [ARGS...]
//	    runs CMD and writes the CPU seconds (user + system) of CMD and of
//	    every descendant it waited for to FILE; exits with CMD's status.
//	    Nested around `sluice run` and around the load generator inside
//	    it, the difference is sluice's own CPU time.
//	probe freeport
//	    prints a loopback port that is free for TCP and UDP right now (for
//	    peers that cannot listen on port 0 and report it).
//
// Certificates are verified against the system roots, which honour
// SSL_CERT_FILE (set by sluice run to its bundle), or against -cacert.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "latency":
		err = latency(os.Args[2:])
	case "dns":
		err = dnsLoad(os.Args[2:])
	case "bulk":
		err = bulk(os.Args[2:])
	case "freeport":
		err = freePort()
	case "cputime":
		err = cpuTime(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: probe latency|dns|bulk [flags] TARGET | probe freeport")
	os.Exit(2)
}

// client returns an HTTP/1.1 client that keeps one connection alive,
// optionally dialing NAME at ADDR and trusting only cacert.
func client(resolve, cacert string) (*http.Client, error) {
	tcfg := &tls.Config{}
	if cacert != "" {
		pem, err := os.ReadFile(cacert)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificate in %s", cacert)
		}
		tcfg.RootCAs = pool
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		TLSClientConfig:     tcfg,
		ForceAttemptHTTP2:   false,
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{}, // HTTP/1.1 only
		MaxIdleConnsPerHost: 1,
		DisableCompression:  true,
		Proxy:               nil,
		DialContext:         d.DialContext,
	}
	if resolve != "" {
		name, addr, ok := strings.Cut(resolve, ":")
		if !ok {
			return nil, errors.New("-resolve wants NAME:ADDR")
		}
		tr.DialContext = func(ctx context.Context, network, hostport string) (net.Conn, error) {
			h, p, err := net.SplitHostPort(hostport)
			if err == nil && strings.EqualFold(h, name) {
				hostport = net.JoinHostPort(addr, p)
			}
			return d.DialContext(ctx, network, hostport)
		}
	}
	return &http.Client{Transport: tr, Timeout: 5 * time.Minute}, nil
}

func get(c *http.Client, url string) (int64, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return n, err
	}
	if resp.StatusCode != http.StatusOK {
		return n, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return n, nil
}

func latency(args []string) error {
	fs := flag.NewFlagSet("latency", flag.ExitOnError)
	n := fs.Int("n", 3000, "measured requests")
	warm := fs.Int("warmup", 200, "unmeasured requests first")
	resolve := fs.String("resolve", "", "dial NAME at ADDR (NAME:ADDR)")
	cacert := fs.String("cacert", "", "trust only this PEM")
	_ = fs.Parse(args)
	if fs.NArg() != 1 {
		return errors.New("latency wants one URL")
	}
	c, err := client(*resolve, *cacert)
	if err != nil {
		return err
	}
	url := fs.Arg(0)
	for range *warm {
		if _, err := get(c, url); err != nil {
			return err
		}
	}
	lat := make([]float64, 0, *n)
	for range *n {
		t := time.Now()
		if _, err := get(c, url); err != nil {
			return err
		}
		lat = append(lat, float64(time.Since(t).Nanoseconds())/1e3)
	}
	slices.Sort(lat)
	q := func(p float64) float64 { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	var sum float64
	for _, v := range lat {
		sum += v
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]any{
		"n": len(lat), "p50_us": q(0.50), "p90_us": q(0.90), "p99_us": q(0.99), "mean_us": sum / float64(len(lat)),
	})
}

func bulk(args []string) error {
	fs := flag.NewFlagSet("bulk", flag.ExitOnError)
	resolve := fs.String("resolve", "", "dial NAME at ADDR (NAME:ADDR)")
	cacert := fs.String("cacert", "", "trust only this PEM")
	_ = fs.Parse(args)
	if fs.NArg() != 1 {
		return errors.New("bulk wants one URL")
	}
	c, err := client(*resolve, *cacert)
	if err != nil {
		return err
	}
	t := time.Now()
	n, err := get(c, fs.Arg(0))
	if err != nil {
		return err
	}
	sec := time.Since(t).Seconds()
	return json.NewEncoder(os.Stdout).Encode(map[string]any{"bytes": n, "seconds": sec, "bytes_per_sec": float64(n) / sec})
}

func dnsLoad(args []string) error {
	fs := flag.NewFlagSet("dns", flag.ExitOnError)
	workers := fs.Int("c", 8, "concurrent workers (one UDP socket each)")
	dur := fs.Duration("d", 5*time.Second, "duration")
	name := fs.String("name", "api.bench.test", "query name (type A)")
	_ = fs.Parse(args)
	if fs.NArg() != 1 {
		return errors.New("dns wants SERVER:PORT")
	}
	server := fs.Arg(0)
	var ok, failed atomic.Int64
	deadline := time.Now().Add(*dur)
	var wg sync.WaitGroup
	errc := make(chan error, *workers)
	for w := range *workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := net.Dial("udp", server)
			if err != nil {
				errc <- err
				return
			}
			defer conn.Close()
			m := new(dns.Msg)
			m.SetQuestion(dns.Fqdn(*name), dns.TypeA)
			buf := make([]byte, 1500)
			for id := uint16(w) << 12; time.Now().Before(deadline); id++ {
				m.Id = id
				q, err := m.Pack()
				if err != nil {
					errc <- err
					return
				}
				_ = conn.SetDeadline(time.Now().Add(time.Second))
				if _, err := conn.Write(q); err != nil {
					failed.Add(1)
					continue
				}
				for {
					k, err := conn.Read(buf)
					if err != nil {
						failed.Add(1)
						break
					}
					if k >= 2 && uint16(buf[0])<<8|uint16(buf[1]) == id {
						r := new(dns.Msg)
						if r.Unpack(buf[:k]) == nil && r.Rcode == dns.RcodeSuccess && len(r.Answer) > 0 {
							ok.Add(1)
						} else {
							failed.Add(1)
						}
						break
					}
				}
			}
		}()
	}
	start := time.Now()
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return err
	}
	sec := time.Since(start).Seconds()
	return json.NewEncoder(os.Stdout).Encode(map[string]any{
		"qps": float64(ok.Load()) / sec, "answered": ok.Load(), "failed": failed.Load(), "seconds": sec,
	})
}

func freePort() error {
	for range 50 {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return err
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp4", ln.Addr().String())
		ln.Close()
		if err != nil {
			continue
		}
		pc.Close()
		fmt.Println(port)
		return nil
	}
	return errors.New("no free port")
}

func cpuTime(args []string) error {
	if len(args) < 2 {
		return errors.New("cputime wants FILE CMD [ARGS...]")
	}
	cmd := exec.Command(args[1], args[2:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	runErr := cmd.Run()
	if cmd.ProcessState == nil {
		return runErr
	}
	// wait4 reports the child's usage including its waited-for children.
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		return errors.New("no rusage")
	}
	sec := float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
	if err := os.WriteFile(args[0], []byte(strconv.FormatFloat(sec, 'f', 6, 64)+"\n"), 0o644); err != nil {
		return err
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		os.Exit(max(code, 1))
	}
	return nil
}
