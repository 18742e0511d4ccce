package proxy

import (
	"fmt"
	"testing"
)

// TestH2ExtendedConnectRefused: WebSocket over HTTP/2 (RFC 8441 extended
// CONNECT, :protocol websocket) would carry frames past the HTTP/1.1
// upgrade path that redacts them; the HTTP/2 front end refuses it (an
// error status or a reset stream) and the upstream sees no request.
func TestH2ExtendedConnectRefused(t *testing.T) {
	t.Parallel()
	log := &requestLog{}
	up := newUpstream(t, "127.0.0.1", log)
	dst := addrPort(t, up.URL)
	e := echoEnv(t, dst.Port())
	e.bind("api.test", dst)
	for _, fields := range [][][2]string{
		{{":method", "CONNECT"}, {":protocol", "websocket"}, {":scheme", "https"}, {":authority", fmt.Sprintf("api.test:%d", dst.Port())}, {":path", "/ws"},
			{"sec-websocket-version", "13"}},
		{{":method", "CONNECT"}, {":authority", fmt.Sprintf("api.test:%d", dst.Port())}},
	} {
		code, body := rawH2(t, e, dst, "api.test", fields)
		if code >= 200 && code < 300 {
			t.Errorf("%v: answered %d %q", fields[:2], code, body)
		}
		t.Logf("%v: %d %q", fields[:2], code, body)
	}
	if got := log.take(); len(got) != 0 {
		t.Fatalf("the upstream saw %q", got)
	}
}
