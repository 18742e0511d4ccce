package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/api"
	"github.com/sluice-dev/sluice/pkg/cgroup"
	"github.com/sluice-dev/sluice/pkg/client"
	"github.com/sluice-dev/sluice/pkg/testutil"
)

// TestDaemonScale attaches SLUICE_SCALE sandbox cgroups (1,000 in `make
// bench`) to one daemon and reports attach time per sandbox, daemon memory
// per idle sandbox, and connect() latency from a sandbox with 1 versus N
// sandboxes attached. It is bounded by the count and skipped unless
// SLUICE_SCALE is set (it is a benchmark, not a unit test).
func TestDaemonScale(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("SLUICE_SCALE"))
	if n <= 0 {
		t.Skip("scale benchmark: set SLUICE_SCALE=N (make bench sets 1000); not a privilege skip")
	}
	w := newWorld(t)
	// SLUICE_SCALE_PROFILE=DIR writes the daemon's CPU profile of the
	// attach phase and heap profiles before and after it into DIR.
	profDir := os.Getenv("SLUICE_SCALE_PROFILE")
	var pprofAddr string
	var extra []string
	if profDir != "" {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		pprofAddr = ln.Addr().String()
		ln.Close()
		extra = append(extra, "--pprof", pprofAddr)
	}
	d := startDaemon(t, w, daemonOpts{extra: extra})
	profile := func(name, query string) {
		if profDir == "" {
			return
		}
		resp, err := http.Get("http://" + pprofAddr + "/debug/pprof/" + query)
		if err != nil {
			t.Logf("profile %s: %v", name, err)
			return
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		if err := os.WriteFile(filepath.Join(profDir, name), data, 0o644); err != nil {
			t.Logf("profile %s: %v", name, err)
		}
	}
	target := testutil.TCPCanary(t, "tcp4")
	_, port, _ := strings.Cut(target.Addr, ":")
	pol := writePolicy(t, w.dir, "scale.yaml", fmt.Sprintf(
		"version: 1\nrules:\n  - name: direct\n    cidrs: [127.0.0.1/32]\n    ports: [%s]\n    direct: true\n", port))
	policyText, _ := os.ReadFile(pol)
	mnt, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	parent, err := cgroup.Create(mnt, testutil.RandomName("sluice-scale-"))
	if err != nil {
		t.Fatal(err)
	}
	cl := client.New(d.socket)
	t.Cleanup(func() {
		for i := 0; i < n; i++ {
			cl.Detach(context.Background(), fmt.Sprintf("scale-%d", i))
		}
		cgroup.Remove(parent, 30*time.Second)
	})
	cgs := make([]string, n)
	for i := range cgs {
		if cgs[i], err = cgroup.Create(parent, strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	attach := func(i int) time.Duration {
		start := time.Now()
		if _, err := cl.Attach(context.Background(), api.AttachRequest{Name: fmt.Sprintf("scale-%d", i), Cgroup: cgs[i],
			PolicyFile: "scale.yaml", Policy: string(policyText)}); err != nil {
			t.Fatalf("attach %d: %v", i, err)
		}
		return time.Since(start)
	}
	measure := func(inSandbox bool) float64 {
		cmd := exec.Command(filepath.Join(w.dir, "connect"), "-n", "2000", "-rounds", "5", target.Addr)
		var out []byte
		var err error
		if inSandbox {
			out, err = testutil.RunInCgroup(cmd, cgs[0])
		} else {
			out, err = cmd.CombinedOutput()
		}
		if err != nil {
			t.Fatalf("connect benchmark: %v\n%s", err, out)
		}
		s := string(out)
		i := strings.Index(s, `"ns_per_connect":`)
		v, _ := strconv.ParseFloat(strings.TrimRight(strings.SplitN(s[i+17:], ",", 2)[0], "}\n"), 64)
		return v
	}
	if out, err := exec.Command("go", "build", "-o", filepath.Join(w.dir, "connect"), "../../scripts/bench/connect").CombinedOutput(); err != nil {
		t.Fatalf("building the connect benchmark: %v\n%s", err, out)
	}
	rss0 := rssKiB(t, d.cmd.Process.Pid)
	fds0 := fdCount(t, d.cmd.Process.Pid)
	// Each sandbox of the host namespace holds one descriptor (its UDP
	// resolver; the proxy and IPv6 resolver listeners are shared): say at
	// once when the daemon's open-file limit cannot hold N, instead of
	// failing at the sandbox that does not fit.
	if lim := openFileLimit(t, d.cmd.Process.Pid); lim > 0 && int64(fds0)+int64(n)+16 > lim {
		t.Fatalf("SLUICE_SCALE=%d needs ~%d descriptors (1 per sandbox + %d) but the daemon's open-file limit is %d: "+
			"at most %d sandboxes here; raise the hard RLIMIT_NOFILE (needs CAP_SYS_RESOURCE, e.g. ulimit -Hn 100000 as root)",
			n, int64(fds0)+int64(n), fds0, lim, lim-int64(fds0)-16)
	}
	// Medians of three interleaved measurements (inside, outside): one
	// sample moves by ±15% on a shared 2-CPU machine.
	medians := func() (in, out float64) {
		var ins, outs []float64
		for i := 0; i < 3; i++ {
			ins = append(ins, measure(true))
			outs = append(outs, measure(false))
		}
		sort.Float64s(ins)
		sort.Float64s(outs)
		return ins[1], outs[1]
	}
	attach(0)
	one, outOne := medians()
	profile("heap0.pprof", "heap?gc=1")
	profile("memstats0.txt", "heap?debug=1")
	cpuDone := make(chan struct{})
	go func() {
		defer close(cpuDone)
		profile("attach-cpu.pprof", "profile?seconds=30")
	}()
	var times []time.Duration
	for i := 1; i < n; i++ {
		times = append(times, attach(i))
	}
	<-cpuDone
	profile("heapN.pprof", "heap?gc=1")
	profile("goroutines.txt", "goroutine?debug=1")
	profile("memstats.txt", "heap?debug=1")
	if profDir != "" {
		_ = os.WriteFile(filepath.Join(profDir, "daemon.log"), []byte(d.log.String()), 0o644)
	}
	time.Sleep(time.Second)
	rssN := rssKiB(t, d.cmd.Process.Pid)
	fdsN := fdCount(t, d.cmd.Process.Pid)
	many, outMany := medians()
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	var total time.Duration
	for _, d := range times {
		total += d
	}
	t.Logf("sandboxes attached: %d", n)
	t.Logf("attach time per sandbox: mean %.2f ms, median %.2f ms, p99 %.2f ms",
		float64(total.Microseconds())/float64(len(times))/1000, float64(times[len(times)/2].Microseconds())/1000,
		float64(times[len(times)*99/100].Microseconds())/1000)
	t.Logf("daemon RSS: %d KiB before, %d KiB after: %.1f KiB per sandbox", rss0, rssN, float64(rssN-rss0)/float64(n))
	t.Logf("daemon descriptors: %d before, %d after: %.2f per sandbox", fds0, fdsN, float64(fdsN-fds0)/float64(n))
	t.Logf("connect() from a sandbox: %.0f ns with 1 sandbox, %.0f ns with %d: ratio %.3f", one, many, n, many/one)
	t.Logf("control, connect() outside any sandbox: %.0f ns with 1 sandbox, %.0f ns with %d: ratio %.3f", outOne, outMany, n, outMany/outOne)
	if target.Hits() == 0 {
		t.Fatal("the connect benchmark never reached its target")
	}
}

// openFileLimit is the soft RLIMIT_NOFILE of process pid (0 if unknown).
func openFileLimit(t *testing.T, pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "Max open files") {
			f := strings.Fields(line)
			v, _ := strconv.ParseInt(f[3], 10, 64)
			return v
		}
	}
	return 0
}

func fdCount(t *testing.T, pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func rssKiB(t *testing.T, pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v
		}
	}
	return 0
}
