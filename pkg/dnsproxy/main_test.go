package dnsproxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/policy"
)

// benchServerEnv makes the test binary act as a standalone sluice resolver
// for BenchmarkQPS, so that sluice, like dnsmasq, runs in its own process
// and does not share the benchmark client's.
const benchServerEnv = "SLUICE_DNSPROXY_BENCH_UPSTREAM"

func TestMain(m *testing.M) {
	if up := os.Getenv(benchServerEnv); up != "" {
		os.Exit(runBenchServer(up))
	}
	os.Exit(m.Run())
}

// runBenchServer serves allowed.test on a loopback port it prints, until
// its stdin closes.
func runBenchServer(upstream string) int {
	r, err := New(Config{Upstreams: []string{upstream}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	pol, err := policy.Parse("bench.yaml", []byte(newTestPolicy("allowed.test").yaml()))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { io.Copy(io.Discard, os.Stdin); cancel() }()
	sb := &Sandbox{Name: "bench", Policy: func() *policy.Policy { return pol }, Allow: &allowRec{}, Audit: audit.Discard{}}
	fmt.Println(pc.LocalAddr().String())
	if err := r.Serve(ctx, sb, pc, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// startBenchServer runs the test binary as a resolver process.
func startBenchServer(b *testing.B, upstream string) string {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), benchServerEnv+"="+upstream)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { stdin.Close(); cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("bench server: %v", err)
	}
	return strings.TrimSpace(line)
}
