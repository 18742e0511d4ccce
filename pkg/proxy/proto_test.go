package proxy

import (
	"fmt"
	"io"
	"net/http"
	"testing"
)

// TestClientProtocols: the test client of env (e.client) speaks HTTP/2 to
// the proxy's HTTP/2 front end when asked and HTTP/1.1 otherwise, so the
// tests that loop over h2 (echo redaction, the 1 GiB streams, shaping,
// oauth2, sigv4) exercise both front ends.
func TestClientProtocols(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	dst := addrPort(t, up.URL)
	e := echoEnv(t, dst.Port())
	e.bind("api.test", dst)
	for _, h2 := range []bool{false, true} {
		resp, err := e.client(h2).Get(fmt.Sprintf("https://api.test:%d/", dst.Port()))
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		if want := map[bool]int{false: 1, true: 2}[h2]; resp.ProtoMajor != want || resp.TLS == nil || h2 && resp.TLS.NegotiatedProtocol != "h2" {
			t.Errorf("h2=%v: answered over %s", h2, resp.Proto)
		}
	}
}
