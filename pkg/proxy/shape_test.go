package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/policy"
)

// bodySink is an upstream that records every request body it read whole,
// and counts requests that reached it at all.
type bodySink struct {
	mu       sync.Mutex
	bodies   []string
	partial  int // requests whose body ended with an error (aborted upstream)
	requests atomic.Int64
}

func (b *bodySink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.requests.Add(1)
	if testing.Verbose() {
		fmt.Println("SINK", r.Method, r.URL.Path, r.ContentLength, r.Proto)
	}
	data, err := io.ReadAll(r.Body)
	b.mu.Lock()
	if err != nil {
		b.partial++
	} else {
		b.bodies = append(b.bodies, string(data))
	}
	b.mu.Unlock()
	fmt.Fprintf(w, "got %d bytes cl=%d te=%v md5=%q\n", len(data), r.ContentLength, r.TransferEncoding, r.Header.Get("Content-MD5"))
}

func (b *bodySink) complete() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.bodies...)
}

const shapePolicy = `
version: 1
rules:
  - name: upload
    hosts: [up.test]
    request:
      max_body: %s
      deny_body: ["-----BEGIN [A-Z ]*PRIVATE KEY-----"]
      redact_body:
        - {pattern: '\b\d{3}-\d{2}-\d{4}\b', with: "[ssn]"}
      json: true
`

func shapeEnv(t *testing.T, maxBody string) (*env, *bodySink, string) {
	sink := &bodySink{}
	up := newUpstream(t, "127.0.0.1", sink)
	dst := addrPort(t, up.URL)
	e := newEnv(t, fmt.Sprintf(shapePolicy, maxBody))
	e.bind("up.test", dst)
	return e, sink, fmt.Sprintf("https://up.test:%d", dst.Port())
}

// chunked hides a reader's length so the client sends it chunked.
type chunked struct{ io.Reader }

func TestRequestShaping(t *testing.T) {
	t.Parallel()
	e, sink, base := shapeEnv(t, "1KiB")
	pem := "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n"
	tests := []struct {
		name     string
		body     func() io.Reader
		ct       string
		wantCode int
		wantBody string // in the upstream's body (allowed) or the answer (refused)
	}{
		{"over max_body by Content-Length", func() io.Reader { return strings.NewReader(strings.Repeat("a", 2000)) }, "", 413, "max_body 1024 of rule upload"},
		{"over max_body chunked", func() io.Reader { return chunked{strings.NewReader(strings.Repeat("a", 2000))} }, "", 413, "max_body 1024 of rule upload"},
		{"private key", func() io.Reader { return strings.NewReader("key: " + pem) }, "", 403, "deny_body[0] of rule upload"},
		{"private key chunked", func() io.Reader { return chunked{strings.NewReader("key: " + pem)} }, "", 403, "deny_body[0] of rule upload"},
		{"not JSON", func() io.Reader { return strings.NewReader(`{"a": 1,`) }, "application/json", 400, "not valid JSON"},
		{"not JSON (+json)", func() io.Reader { return strings.NewReader(`[1 2]`) }, "application/vnd.api+json; charset=utf-8", 400, "not valid JSON"},
		{"JSON", func() io.Reader { return strings.NewReader(`{"ssn": "123-45-6789"}`) }, "application/json", 200, `{"ssn": "[ssn]"}`},
		{"not JSON but not declared", func() io.Reader { return strings.NewReader(`{{{`) }, "text/plain", 200, `{{{`},
		{"ssn", func() io.Reader { return strings.NewReader("a 123-45-6789 b 987-65-4321") }, "", 200, "a [ssn] b [ssn]"},
		{"no ssn in longer digits", func() io.Reader { return strings.NewReader("1123-45-67890") }, "", 200, "1123-45-67890"},
	}
	for _, h2 := range []bool{false, true} {
		c := e.client(h2)
		for _, tt := range tests {
			t.Run(fmt.Sprintf("h2=%v/%s", h2, tt.name), func(t *testing.T) {
				before := sink.requests.Load()
				req, _ := http.NewRequest("POST", base+"/upload", tt.body())
				if tt.ct != "" {
					req.Header.Set("Content-Type", tt.ct)
				}
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				got := readAll(t, resp)
				if resp.StatusCode != tt.wantCode {
					t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.wantCode, got)
				}
				if tt.wantCode != 200 {
					if !strings.Contains(got, tt.wantBody) || !strings.Contains(got, "sluice policy") {
						t.Fatalf("refusal %q does not say %q", got, tt.wantBody)
					}
					if n := sink.requests.Load() - before; n != 0 {
						t.Fatalf("the upstream received %d requests, want none", n)
					}
					return
				}
				bodies := sink.complete()
				if len(bodies) == 0 || bodies[len(bodies)-1] != tt.wantBody {
					t.Fatalf("upstream bodies %q, want last %q", bodies, tt.wantBody)
				}
			})
		}
	}
	// The events say what was redacted, never the values.
	evs := e.rec.waitKind(t, audit.KindHTTP, 2*len(tests))
	var redacted int
	for _, ev := range evs {
		if strings.Contains(fmt.Sprint(ev), "-6789") || strings.Contains(fmt.Sprint(ev), "MIIE") {
			t.Fatalf("event holds a body value: %+v", ev)
		}
		redacted += ev.Redacted[`\b\d{3}-\d{2}-\d{4}\b`]
		if ev.Status == 413 && (ev.Decision != audit.DecisionDeny || !strings.Contains(ev.Reason, "max_body")) {
			t.Fatalf("413 event: %+v", ev)
		}
	}
	if redacted != 2*3 {
		t.Fatalf("events count %d redactions, want 6", redacted)
	}
}

// pausedReader yields parts one at a time, waiting between them, so each
// arrives at the proxy in its own read.
type pausedReader struct {
	parts [][]byte
	pause time.Duration
	n     int
}

func (r *pausedReader) Read(p []byte) (int, error) {
	for len(r.parts) > 0 && len(r.parts[0]) == 0 {
		r.parts = r.parts[1:]
		r.n++
		time.Sleep(r.pause) // let the previous part be forwarded alone
	}
	if len(r.parts) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.parts[0])
	r.parts[0] = r.parts[0][n:]
	return n, nil
}

// TestRequestShapingStreams: bodies past the prebuffer are streamed; an SSN
// split across two client writes is still replaced, and a violation late in
// the body never lets the upstream request complete.
func TestRequestShapingStreams(t *testing.T) {
	t.Parallel()
	e, sink, base := shapeEnv(t, "8MiB")
	big := bytes.Repeat([]byte("lorem ipsum "), (policy.PrebufferBody+100_000)/12)
	for _, h2 := range []bool{false, true} {
		c := e.client(h2)
		t.Run(fmt.Sprintf("h2=%v/split ssn", h2), func(t *testing.T) {
			for _, cl := range []bool{false, true} {
				parts := [][]byte{append(bytes.Clone(big), "x 123-4"...), []byte("5-6789 y")}
				var body io.Reader = &pausedReader{parts: parts, pause: 50 * time.Millisecond}
				if !cl {
					body = chunked{body}
				}
				req, _ := http.NewRequest("POST", base+"/big", body)
				if cl {
					req.ContentLength = int64(len(parts[0]) + len(parts[1]))
				}
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				got := readAll(t, resp)
				if resp.StatusCode != 200 {
					t.Fatalf("status %d: %s", resp.StatusCode, got)
				}
				bodies := sink.complete()
				last := bodies[len(bodies)-1]
				if !strings.HasSuffix(last, "x [ssn] y") || strings.Contains(last, "6789") || len(last) != len(big)+len("x [ssn] y") {
					t.Fatalf("upstream body ends %q (len %d)", last[max(0, len(last)-40):], len(last))
				}
			}
		})
		t.Run(fmt.Sprintf("h2=%v/late private key", h2), func(t *testing.T) {
			for _, cl := range []bool{false, true} {
				before := len(sink.complete())
				parts := [][]byte{bytes.Clone(big), []byte("-----BEGIN EC PRIV"), []byte("ATE KEY-----\nrest")}
				var body io.Reader = &pausedReader{parts: parts, pause: 50 * time.Millisecond}
				if !cl {
					body = chunked{body}
				}
				req, _ := http.NewRequest("POST", base+"/big", body)
				if cl {
					req.ContentLength = int64(len(parts[0]) + len(parts[1]) + len(parts[2]))
				}
				resp, err := c.Do(req)
				if err == nil {
					got := readAll(t, resp)
					if resp.StatusCode != 403 {
						t.Fatalf("status %d: %s", resp.StatusCode, got)
					}
				}
				if n := len(sink.complete()); n != before {
					t.Fatalf("the upstream received a complete request body (%d new)", n-before)
				}
			}
		})
	}
}

// TestRequestShapingStreamsJSON: a JSON body past the prebuffer is
// validated while streaming; an invalid one never completes upstream.
func TestRequestShapingStreamsJSON(t *testing.T) {
	t.Parallel()
	e, sink, base := shapeEnv(t, "8MiB")
	filler := strings.Repeat("lorem ipsum ", (policy.PrebufferBody+50_000)/12)
	for _, h2 := range []bool{false, true} {
		c := e.client(h2)
		for _, tt := range []struct {
			body string
			ok   bool
		}{
			{`{"a": "` + filler + `", "b": [1, 2, {"c": null}]}`, true},
			{`{"a": "` + filler + `", "b": [1, 2, {"c": null}]`, false},
			{`{"a": "` + filler + `"} {"second": 1}`, false},
		} {
			before := len(sink.complete())
			req, _ := http.NewRequest("POST", base+"/json", chunked{strings.NewReader(tt.body)})
			req.Header.Set("Content-Type", "application/json")
			resp, err := c.Do(req)
			if err != nil {
				if tt.ok {
					t.Fatal(err)
				}
			} else {
				got := readAll(t, resp)
				if want := map[bool]int{true: 200, false: 400}[tt.ok]; resp.StatusCode != want {
					t.Fatalf("h2=%v: status %d, want %d: %.200s", h2, resp.StatusCode, want, got)
				}
			}
			if n := len(sink.complete()) - before; n != map[bool]int{true: 1, false: 0}[tt.ok] {
				t.Fatalf("h2=%v ok=%v: %d complete bodies upstream", h2, tt.ok, n)
			}
		}
	}
}

// TestRedactStageSplits feeds a body in two reads at every split point: the
// matches and the output are those of the whole body.
func TestRedactStageSplits(t *testing.T) {
	t.Parallel()
	red := policy.Redaction{Pattern: regexp.MustCompile(`\b\d{3}-\d{2}-\d{4}\b`), With: "[ssn]"}
	pad := strings.Repeat("z", window+10)
	for _, text := range []string{
		pad + " 123-45-6789 " + pad + "000-11-2222",
		"123-45-6789" + pad + "1123-45-6789 9 " + pad,
		pad + pad + "555-55-5555",
	} {
		want, wantN := replaceAll(red, []byte(text))
		for cut := 0; cut <= len(text); cut += 61 {
			var n atomic.Int64
			st := &redactStage{red: red, count: &n}
			var out []byte
			out = append(out, st.push([]byte(text[:cut]), false)...)
			out = append(out, st.push([]byte(text[cut:]), false)...)
			out = append(out, st.push(nil, true)...)
			if string(out) != string(want) || int(n.Load()) != wantN {
				t.Fatalf("cut %d: got %d matches, output differs from the whole-body replacement (%d)", cut, n.Load(), wantN)
			}
		}
	}
}

func TestShapingAuditMode(t *testing.T) {
	t.Parallel()
	sink := &bodySink{}
	up := newUpstream(t, "127.0.0.1", sink)
	dst := addrPort(t, up.URL)
	e := newEnv(t, "mode: audit\n"+fmt.Sprintf(shapePolicy, "16"))
	e.bind("up.test", dst)
	c := e.client(false)
	resp, err := c.Post(fmt.Sprintf("https://up.test:%d/x", dst.Port()), "text/plain", strings.NewReader("ssn 123-45-6789 and more than sixteen bytes"))
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	if resp.StatusCode != 200 {
		t.Fatalf("audit mode refused: %d", resp.StatusCode)
	}
	if b := sink.complete(); len(b) != 1 || b[0] != "ssn [ssn] and more than sixteen bytes" {
		t.Fatalf("upstream got %q", b)
	}
	evs := e.rec.waitKind(t, audit.KindHTTP, 1)
	if len(evs) != 1 || evs[0].Decision != audit.DecisionWouldDeny || !strings.Contains(evs[0].Reason, "max_body") || evs[0].Redacted == nil {
		t.Fatalf("event %+v", evs)
	}
}

// TestFindAllPrefilter: the prefiltered search finds what FindAllIndex
// finds, with and without a context byte.
func TestFindAllPrefilter(t *testing.T) {
	t.Parallel()
	pats := []string{`\b\d{3}-\d{2}-\d{4}\b`, `-----BEGIN [A-Z ]*PRIVATE KEY-----`, `(?i)secret`, `a|b\d`, `\bx+`, `[é]t`, `(ab)+c`, `(?m)^key=\w+`}
	texts := []string{"", "x", "123-45-6789", " 1123-45-6789", "a-----BEGIN RSA PRIVATE KEY-----", "SeCrEt secret", "zzb1a", "xxx yxx", "été", "ababc abc", "key=1\nkey=2", "9123-45-6789 123-45-6789"}
	for _, p := range pats {
		re := regexp.MustCompile(p)
		for _, tx := range texts {
			want := fmt.Sprint(re.FindAllIndex([]byte(tx), -1))
			if got := fmt.Sprint(findAll(re, []byte(tx), 0, false)); got != want {
				t.Errorf("%s on %q: %s, want %s", p, tx, got, want)
			}
			if got := matches(re, []byte(tx)); got != (want != "[]") {
				t.Errorf("matches %s on %q: %v", p, tx, got)
			}
			// With a context byte: the same as searching ctx+text and
			// dropping matches that start in ctx.
			for _, ctx := range []byte{' ', '1', 'a'} {
				var exp [][]int
				for _, l := range re.FindAllIndex(append([]byte{ctx}, tx...), -1) {
					if l[0] > 0 {
						exp = append(exp, []int{l[0] - 1, l[1] - 1})
					}
				}
				got := findAll(re, []byte(tx), ctx, true)
				if len(exp) > 0 && fmt.Sprint(got) != fmt.Sprint(exp) && fmt.Sprint(got) != want {
					t.Errorf("%s on %q after %q: %v, want %v", p, tx, ctx, got, exp)
				}
			}
		}
	}
}

// TestShapingEmptyBodies: requests without a body (GET, an empty POST) go
// through a shaping rule unchanged.
func TestShapingEmptyBodies(t *testing.T) {
	t.Parallel()
	e, sink, base := shapeEnv(t, "1KiB")
	for _, h2 := range []bool{false, true} {
		c := e.client(h2)
		for _, m := range []string{"GET", "POST", "DELETE"} {
			var body io.Reader
			if m == "POST" {
				body = strings.NewReader("")
			}
			req, _ := http.NewRequest(m, base+"/e", body)
			req.Header.Set("Content-Type", "application/json")
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got := readAll(t, resp)
			if resp.StatusCode != 200 || !strings.Contains(got, "got 0 bytes") || strings.Contains(got, "te=[chunked]") {
				t.Fatalf("h2=%v %s: %d %s", h2, m, resp.StatusCode, got)
			}
		}
	}
	_ = sink
}
