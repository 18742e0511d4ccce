package proxy

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// TestShapingDropsStaleDigests: a body that redact_body changes reaches the
// upstream without the client's Content-MD5 (it would no longer match); a
// body it leaves alone keeps it. A streamed body (longer than the
// prebuffer) may change after the head is sent, so it never carries one.
func TestShapingDropsStaleDigests(t *testing.T) {
	t.Parallel()
	e, _, base := shapeEnv(t, "16MiB")
	const md5 = "1B2M2Y8AsgTpgAmY7PhCfg=="
	big := strings.Repeat("x", 2<<20)
	tests := []struct {
		name, body string
		chunked    bool
		keep       bool
	}{
		{"redacted", "a 123-45-6789 b", false, false},
		{"redacted chunked", "a 123-45-6789 b", true, false},
		{"unchanged", "nothing to redact", false, true},
		{"streamed", big, false, false},
	}
	for _, h2 := range []bool{false, true} {
		c := e.client(h2)
		for _, tt := range tests {
			t.Run(fmt.Sprintf("h2=%v/%s", h2, tt.name), func(t *testing.T) {
				var body = strings.NewReader(tt.body)
				req, _ := http.NewRequest("POST", base+"/upload", body)
				if tt.chunked {
					req, _ = http.NewRequest("POST", base+"/upload", chunked{body})
				}
				req.Header.Set("Content-MD5", md5)
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				got := readAll(t, resp)
				if resp.StatusCode != 200 {
					t.Fatalf("status %d: %s", resp.StatusCode, got)
				}
				want := `md5=""`
				if tt.keep {
					want = fmt.Sprintf("md5=%q", md5)
				}
				if !strings.Contains(got, want) {
					t.Fatalf("upstream answered %q, want %s", got, want)
				}
			})
		}
	}
}
