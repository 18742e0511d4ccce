package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestH2EarlyAnswerEndsStreamCleanly: an HTTP/2 client sends a POST's
// header, and its body only after the answer has arrived (curl does so
// when the upstream, or sluice's gate, answers at once). The answer must
// not end with the stream reset: curl 7.88 reports RST_STREAM(NO_ERROR)
// after a complete answer as "Stream error in the HTTP/2 framing layer"
// and fails the request (seen as a flaky TestAuditScriptedAgentSequence).
func TestH2EarlyAnswerEndsStreamCleanly(t *testing.T) {
	t.Parallel()
	up := newUpstreamWith(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "early answer") // the body is not read
	}), nil)
	dst := addrPort(t, up.URL)
	e := newEnv(t, fmt.Sprintf(`
version: 1
rules:
  - name: api
    hosts: [api.test]
    ports: [%d]
    methods: [POST]
    paths: ["/v1/**"]
`, dst.Port()))
	e.bind("api.test", dst)
	for _, tc := range []struct {
		name, path, want string
		status           int
	}{
		{"forwarded", "/v1/items", "early answer", 200},
		{"refused by the gate", "/admin", "sluice", 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fr, bw := openH2(t, e, dst, "api.test", 20*time.Second)
			writeH2Headers(t, fr, bw, [][2]string{{":method", "POST"}, {":scheme", "https"}, {":authority", fmt.Sprintf("api.test:%d", dst.Port())},
				{":path", tc.path}, {"content-length", "9"}}, false)
			status, sentBody, ended := 0, false, false
			var body bytes.Buffer
			for !ended {
				f, err := fr.ReadFrame()
				if err != nil {
					t.Fatalf("reading frames: %v (status %d, body %q)", err, status, body.String())
				}
				switch f := f.(type) {
				case *http2.SettingsFrame:
					if !f.IsAck() {
						fr.WriteSettingsAck()
						bw.Flush()
					}
				case *http2.MetaHeadersFrame:
					if f.StreamID == 1 {
						fmt.Sscan(f.PseudoValue("status"), &status)
						ended = f.StreamEnded()
					}
				case *http2.DataFrame:
					if f.StreamID == 1 {
						body.Write(f.Data())
						ended = f.StreamEnded()
					}
				case *http2.RSTStreamFrame:
					t.Fatalf("the stream was reset (%v) after status %d, body %q, client body sent: %v", f.ErrCode, status, body.String(), sentBody)
				case *http2.GoAwayFrame:
					t.Fatalf("goaway %v", f.ErrCode)
				}
				// The body goes once the whole answer is in.
				if !sentBody && status != 0 && strings.Contains(body.String(), tc.want) {
					sentBody = true
					fr.WriteData(1, true, []byte("late body"))
					if err := bw.Flush(); err != nil {
						t.Fatal(err)
					}
				}
			}
			if status != tc.status || !strings.Contains(body.String(), tc.want) {
				t.Fatalf("status %d body %q, want %d with %q", status, body.String(), tc.status, tc.want)
			}
			if !sentBody {
				t.Fatalf("the stream ended before the client sent its body: the answer %q ended the stream with the client's half open", body.String())
			}
			// Nothing follows: a reset would come right after the end.
			fr.WritePing(false, [8]byte{1})
			bw.Flush()
			for {
				f, err := fr.ReadFrame()
				if err != nil {
					t.Fatal(err)
				}
				if rst, ok := f.(*http2.RSTStreamFrame); ok {
					t.Fatalf("the stream was reset (%v) after it ended", rst.ErrCode)
				}
				if p, ok := f.(*http2.PingFrame); ok && p.IsAck() {
					return
				}
			}
		})
	}
}
