//go:build !race

package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// ssnStream is a body of n bytes of text with an SSN at the end of every
// block, produced in reads of uneven sizes so that SSNs fall across reads.
type ssnStream struct {
	n, off int64
	block  []byte
	reads  int
}

func newSSNStream(n int64, period int) *ssnStream {
	line := []byte("lorem ipsum dolor sit amet, consectetur adipiscing elit. ")
	ssn := " 123-45-6789 "
	block := bytes.Repeat(line, period/len(line)+1)[:period-len(ssn)]
	return &ssnStream{n: n, block: append(block, ssn...)}
}

func (s *ssnStream) Read(p []byte) (int, error) {
	if s.off >= s.n {
		return 0, io.EOF
	}
	s.reads++
	// Uneven read sizes: SSNs land on every kind of boundary.
	size := min(len(p), 1000+s.reads*7919%30000, int(s.n-s.off))
	m := 0
	for m < size {
		m += copy(p[m:size], s.block[(s.off+int64(m))%int64(len(s.block)):])
	}
	s.off += int64(size)
	return size, nil
}

// TestRequestShapingGiB: a 1 GiB upload through a redact_body rule streams
// with bounded memory; every SSN in it reaches the upstream as [ssn].
func TestRequestShapingGiB(t *testing.T) {
	if testing.Short() {
		t.Skip("1 GiB upload; skipped with -short")
	}
	const size = 1 << 30
	const period = 1 << 20
	var got, digits, marks atomic.Int64
	up := newUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 64<<10)
		for {
			n, err := r.Body.Read(buf)
			got.Add(int64(n))
			for _, c := range buf[:n] {
				switch {
				case c >= '0' && c <= '9':
					digits.Add(1)
				case c == '[':
					marks.Add(1)
				}
			}
			if err != nil {
				break
			}
		}
		io.WriteString(w, "done")
	}))
	dst := addrPort(t, up.URL)
	e := newEnv(t, fmt.Sprintf(shapePolicy, "2GiB"))
	e.bind("up.test", dst)
	c := e.client(false)
	c.Timeout = 5 * time.Minute

	var peakHeap, peakRSS atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peakHeap.Load() {
				peakHeap.Store(ms.HeapInuse)
			}
			if rss := vmRSS(); rss > peakRSS.Load() {
				peakRSS.Store(rss)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	start := time.Now()
	body := newSSNStream(size, period)
	req, _ := http.NewRequest("POST", fmt.Sprintf("https://up.test:%d/upload", dst.Port()), chunked{body})
	resp, err := c.Do(req)
	close(stop)
	<-sampled
	if err != nil {
		t.Fatalf("after %v, %d bytes upstream: %v", time.Since(start), got.Load(), err)
	}
	answer := readAll(t, resp)
	if resp.StatusCode != 200 || answer != "done" {
		t.Fatalf("status %d: %s", resp.StatusCode, answer)
	}
	n := int64(size / period)
	if want := size - n*int64(len("123-45-6789")-len("[ssn]")); got.Load() != want {
		t.Fatalf("upstream got %d bytes, want %d", got.Load(), want)
	}
	if digits.Load() != 0 || marks.Load() != n {
		t.Fatalf("upstream saw %d digits and %d [ssn], want 0 and %d", digits.Load(), marks.Load(), n)
	}
	t.Logf("1 GiB in %v; peak heap in use %d MiB, peak RSS %d MiB", time.Since(start).Round(time.Millisecond), peakHeap.Load()>>20, peakRSS.Load()>>20)
	if peakHeap.Load() > 64<<20 {
		t.Fatalf("peak heap in use %d MiB: the body was not streamed", peakHeap.Load()>>20)
	}
	if peakRSS.Load() > 256<<20 {
		t.Fatalf("peak RSS %d MiB: the body was not streamed", peakRSS.Load()>>20)
	}
	evs := e.rec.waitKind(t, "http", 1)
	if len(evs) != 1 || evs[0].Redacted[`\b\d{3}-\d{2}-\d{4}\b`] != int(n) {
		t.Fatalf("event %+v, want %d redactions", evs, n)
	}
}

// vmRSS is the resident set size of this process (0 if unknown).
func vmRSS() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		if rest, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(string(rest)), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}
