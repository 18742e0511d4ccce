package proxy

import (
	"bufio"
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"context"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/netip"
	"net/textproto"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"

	"github.com/sluice-dev/sluice/pkg/audit"
)

// echoSecret is injected as "Bearer echoSecret": it holds characters that
// percent-encoding and JSON escape, so each encoding differs from the value.
const echoSecret = `s3cr3t/tok+en"v&l<ue>~x`

func echoEnv(t *testing.T, port uint16) *env {
	return newEnv(t, apiPolicy(port), func(e *env, _ *Config) {
		e.sb.Secrets = fakeSecrets{"TOKEN": echoSecret}
	})
}

// echoPayload is every way the echo upstream repeats the Authorization
// header it received: as it is, base64 (standard and URL alphabets, padded
// and not, of the value and of the header line at each alignment), hex,
// percent-encoded, JSON-escaped.
func echoPayload(auth string) string {
	secret := strings.TrimPrefix(auth, "Bearer ")
	var b strings.Builder
	add := func(name, v string) { fmt.Fprintf(&b, "%s: %s\n", name, v) }
	add("raw", auth)
	for _, v := range []string{auth, secret} {
		add("b64", base64.StdEncoding.EncodeToString([]byte(v)))
		add("b64url", base64.URLEncoding.EncodeToString([]byte(v)))
		add("b64raw", base64.RawStdEncoding.EncodeToString([]byte(v)))
		add("b64rawurl", base64.RawURLEncoding.EncodeToString([]byte(v)))
		add("hex", hex.EncodeToString([]byte(v)))
		add("HEX", strings.ToUpper(hex.EncodeToString([]byte(v))))
		add("query", url.QueryEscape(v))
		add("path", url.PathEscape(v))
		add("pct20", strings.ReplaceAll(url.QueryEscape(v), "+", "%20"))
	}
	for _, prefix := range []string{"", "x", "xy"} {
		line := prefix + "GET / HTTP/1.1\r\nAuthorization: " + auth + "\r\nAccept: */*\r\n"
		add("line", base64.StdEncoding.EncodeToString([]byte(line)))
		add("lineurl", base64.RawURLEncoding.EncodeToString([]byte(line)))
	}
	j, _ := json.Marshal(map[string]string{"authorization": auth})
	add("json", string(j))
	add("json-slash", strings.ReplaceAll(string(j), "/", `\/`))
	var ju strings.Builder
	for _, r := range auth {
		fmt.Fprintf(&ju, `\u%04x`, r)
	}
	add("json-u", `{"a":"`+ju.String()+`"}`)
	add("json-U", `{"a":"`+strings.ToUpper(strings.ReplaceAll(ju.String(), `\u`, `@`))+`"}`)
	return strings.ReplaceAll(b.String(), "@", `\u`)
}

var (
	hexRun = regexp.MustCompile(`[0-9a-fA-F]{8,}`)
	b64Run = regexp.MustCompile(`[A-Za-z0-9+/\-_]{6,}`)
	jsonU  = regexp.MustCompile(`\\[uU]([0-9a-fA-F]{4})`)
)

// reveals says how s reveals secret, or "": as it is, or after decoding
// hex or base64 runs (at every offset), percent-encoding or JSON escapes.
// The first and last byte of the secret are left out of the decoded
// checks: a redacted base64 run may keep the bits next to its edges.
func reveals(s, secret string) string {
	if strings.Contains(s, secret) {
		return "raw"
	}
	mid := secret[1 : len(secret)-1]
	for _, run := range hexRun.FindAllString(s, -1) {
		for off := 0; off < 2 && off < len(run); off++ {
			r := run[off:]
			if b, err := hex.DecodeString(r[:len(r)/2*2]); err == nil && bytes.Contains(b, []byte(mid)) {
				return "hex"
			}
		}
	}
	for _, run := range b64Run.FindAllString(s, -1) {
		std := strings.NewReplacer("-", "+", "_", "/").Replace(run)
		for off := 0; off < 4 && off < len(std); off++ {
			r := std[off:]
			n := len(r)
			if n%4 == 1 {
				n--
			}
			if b, err := base64.RawStdEncoding.DecodeString(r[:n]); err == nil && bytes.Contains(b, []byte(mid)) {
				return "base64"
			}
		}
	}
	if u, err := url.QueryUnescape(s); err == nil && strings.Contains(u, secret) {
		return "query-escaped"
	}
	if u, err := url.PathUnescape(s); err == nil && strings.Contains(u, secret) {
		return "percent-encoded"
	}
	j := jsonU.ReplaceAllStringFunc(s, func(m string) string {
		n, _ := strconv.ParseUint(m[2:], 16, 32)
		return string(rune(n))
	})
	j = strings.NewReplacer(`\/`, `/`, `\"`, `"`, `\\`, `\`).Replace(j)
	if strings.Contains(j, secret) {
		return "json-escaped"
	}
	return ""
}

func TestRevealsOracle(t *testing.T) {
	// The oracle itself must see every encoding of the echo payload.
	for _, line := range strings.Split(echoPayload("Bearer "+echoSecret), "\n") {
		if line == "" {
			continue
		}
		if reveals(line, echoSecret) == "" {
			t.Errorf("oracle misses %q", line)
		}
	}
}

// echoUpstream repeats the Authorization header it receives in the way
// the path says: /body/CODING (the echo payload, content-coded), /trailer
// and /trailer-cl (in trailers, chunked or after a Content-Length), /early
// (in a 103 Early Hints header), /ws (in WebSocket frames).
func echoUpstream(t *testing.T) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth := r.Header.Get("Authorization")
		payload := echoPayload(auth)
		switch {
		case strings.HasPrefix(r.URL.Path, "/body/"):
			coding := strings.TrimPrefix(r.URL.Path, "/body/")
			if ae := r.Header.Get("Accept-Encoding"); ae != "identity" {
				t.Errorf("a request with a secret asked for Accept-Encoding %q, want identity", ae)
			}
			// Encoded whatever the request's Accept-Encoding says.
			var buf bytes.Buffer
			var wc io.WriteCloser
			switch coding {
			case "gzip":
				wc = gzip.NewWriter(&buf)
			case "deflate":
				wc = zlib.NewWriter(&buf)
			case "rawdeflate":
				wc, _ = flate.NewWriter(&buf, flate.BestSpeed)
				coding = "deflate"
			case "br":
				wc = brotli.NewWriter(&buf)
			case "zstd":
				wc, _ = zstd.NewWriter(&buf)
			case "identity", "compress", "gzip,br":
				wc = nopWC{&buf}
			}
			if coding == "gzip,br" { // gzip first, then br
				buf.Reset()
				bw := brotli.NewWriter(&buf)
				gw := gzip.NewWriter(bw)
				io.WriteString(gw, payload)
				gw.Close()
				bw.Close()
			} else {
				io.WriteString(wc, payload)
				wc.Close()
			}
			w.Header().Set("Content-Encoding", coding)
			w.Header().Set("X-Echo", base64.StdEncoding.EncodeToString([]byte(auth)))
			w.Write(buf.Bytes())
		case r.URL.Path == "/trailer", r.URL.Path == "/trailer-cl":
			w.Header().Set("Trailer", "X-Echo, X-Echo-Hex")
			body := "trailers follow\n"
			if r.URL.Path == "/trailer-cl" {
				w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			}
			io.WriteString(w, body)
			w.(http.Flusher).Flush()
			w.Header().Set("X-Echo", auth)
			w.Header().Set("X-Echo-Hex", hex.EncodeToString([]byte(auth)))
			w.Header().Set(http.TrailerPrefix+"X-Undeclared", base64.RawURLEncoding.EncodeToString([]byte(auth)))
		case r.URL.Path == "/early":
			w.Header().Set("Link", "</style.css>; rel=preload; as=style; token="+url.QueryEscape(auth))
			w.Header().Set("X-Early", auth)
			w.WriteHeader(http.StatusEarlyHints)
			w.Header().Del("Link")
			w.Header().Del("X-Early")
			io.WriteString(w, "final answer\n")
		case r.URL.Path == "/reason":
			// Reason phrases (HTTP/1.1 only) carrying the value.
			c, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Errorf("hijack: %v", err)
				return
			}
			defer c.Close()
			fmt.Fprintf(brw, "HTTP/1.1 103 Early %s\r\nLink: </a>\r\n\r\n", auth)
			fmt.Fprintf(brw, "HTTP/1.1 200 OK %s\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n", auth)
			brw.Flush()
		case r.URL.Path == "/badhead":
			// A malformed header line quoting the value: Go's parser
			// quotes the line in its error.
			c, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Errorf("hijack: %v", err)
				return
			}
			defer c.Close()
			fmt.Fprintf(brw, "HTTP/1.1 200 OK\r\nBad Header Line %s\r\n\r\n", auth)
			brw.Flush()
		case r.URL.Path == "/ws" || r.URL.Path == "/ws-deflate":
			serveEchoWS(t, w, r, auth, payload)
		default:
			http.NotFound(w, r)
		}
	})
}

type nopWC struct{ io.Writer }

func (nopWC) Close() error { return nil }

// serveEchoWS switches to WebSocket by hand and sends frames that echo
// auth: a text message, a binary message fragmented across three frames
// with the secret split between them and a ping carrying it in the middle,
// a masked frame (not allowed from a server; sluice must still redact it),
// a frame of more than 64 KiB, and a close frame with the secret as reason.
func serveEchoWS(t *testing.T, w http.ResponseWriter, r *http.Request, auth, payload string) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		http.Error(w, "not a websocket request", 400)
		return
	}
	if ext := r.Header.Get("Sec-Websocket-Extensions"); ext != "" {
		t.Errorf("a WebSocket request with a secret offered extensions %q", ext)
	}
	sum := sha1.Sum([]byte(r.Header.Get("Sec-Websocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		t.Errorf("hijack: %v", err)
		return
	}
	defer c.Close()
	ext := ""
	if r.URL.Path == "/ws-deflate" {
		ext = "Sec-WebSocket-Extensions: permessage-deflate\r\n"
	}
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\nX-Echo: %s\r\n%s\r\n",
		base64.StdEncoding.EncodeToString(sum[:]), auth, ext)
	frame := func(fin bool, op byte, mask []byte, p string) {
		b0 := op
		if fin {
			b0 |= 0x80
		}
		hdr := []byte{b0, 0}
		switch n := len(p); {
		case n < 126:
			hdr[1] = byte(n)
		case n < 1<<16:
			hdr[1] = 126
			hdr = binary.BigEndian.AppendUint16(hdr, uint16(n))
		default:
			hdr[1] = 127
			hdr = binary.BigEndian.AppendUint64(hdr, uint64(n))
		}
		pb := []byte(p)
		if mask != nil {
			hdr[1] |= 0x80
			hdr = append(hdr, mask...)
			for i := range pb {
				pb[i] ^= mask[i%4]
			}
		}
		brw.Write(hdr)
		brw.Write(pb)
		brw.Flush() // each frame its own write: the proxy sees them apart
	}
	frame(true, 1, nil, payload)
	cut := len(auth) - 5
	frame(false, 2, nil, "binary start "+auth[:cut])
	frame(true, 9, nil, "ping "+auth)
	frame(false, 0, nil, auth[cut:cut+2])
	frame(true, 0, nil, auth[cut+2:]+" binary end")
	frame(true, 1, []byte{1, 2, 3, 4}, "masked "+payload)
	frame(true, 2, nil, strings.Repeat("x", 70000)+auth+strings.Repeat("y", 100))
	frame(true, 8, nil, "\x03\xe8bye "+auth)
	brw.Flush()
	io.Copy(io.Discard, io.LimitReader(c, 1<<20)) // until the proxy closes
}

// wsFrame is a frame the sandbox received (payload unmasked).
type wsFrame struct {
	fin     bool
	op      byte
	masked  bool
	payload string
}

func readWSFrames(t *testing.T, r io.Reader) []wsFrame {
	t.Helper()
	br := bufio.NewReader(r)
	var frames []wsFrame
	for {
		var h [2]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return frames
		}
		n := uint64(h[1] & 0x7f)
		switch n {
		case 126:
			var b [2]byte
			io.ReadFull(br, b[:])
			n = uint64(binary.BigEndian.Uint16(b[:]))
		case 127:
			var b [8]byte
			io.ReadFull(br, b[:])
			n = binary.BigEndian.Uint64(b[:])
		}
		var mask [4]byte
		masked := h[1]&0x80 != 0
		if masked {
			io.ReadFull(br, mask[:])
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(br, p); err != nil {
			t.Fatalf("frame payload cut short: %v", err)
		}
		if masked {
			for i := range p {
				p[i] ^= mask[i%4]
			}
		}
		frames = append(frames, wsFrame{fin: h[0]&0x80 != 0, op: h[0] & 0x0f, masked: masked, payload: string(p)})
		if h[0]&0x0f == 8 {
			return frames
		}
	}
}

// TestEchoEveryPath: over HTTP/1.1 and HTTP/2, an upstream that echoes the
// injected Authorization header in every encoding, in compressed bodies,
// trailers, 103 headers and WebSocket frames never gets the secret or any
// encoding of it to the sandbox.
func TestEchoEveryPath(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, "127.0.0.1", echoUpstream(t))
	dst := addrPort(t, up.URL)
	e := echoEnv(t, dst.Port())
	e.bind("api.test", dst)
	base := fmt.Sprintf("https://api.test:%d", dst.Port())
	auth := "Bearer " + echoSecret
	check := func(t *testing.T, where, s string) {
		t.Helper()
		if how := reveals(s, echoSecret); how != "" {
			t.Errorf("%s reveals the secret (%s):\n%s", where, how, s)
		}
	}
	for _, h2 := range []bool{false, true} {
		c := e.client(h2)
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			for _, coding := range []string{"identity", "gzip", "deflate", "rawdeflate", "br", "zstd", "gzip,br"} {
				resp, err := c.Get(base + "/body/" + coding)
				if err != nil {
					t.Fatal(err)
				}
				body := readAll(t, resp)
				if resp.StatusCode != 200 {
					t.Fatalf("%s: status %d: %s", coding, resp.StatusCode, body)
				}
				if want := map[bool]int{false: 1, true: 2}[h2]; resp.ProtoMajor != want {
					t.Fatalf("%s: answered over %s, want HTTP/%d", coding, resp.Proto, want)
				}
				if ce := resp.Header.Get("Content-Encoding"); ce != "" {
					t.Errorf("%s: forwarded with Content-Encoding %q", coding, ce)
				}
				// The payload arrives decoded, line by line, each redacted.
				lines := strings.Split(strings.TrimSuffix(body, "\n"), "\n")
				if want := strings.Count(echoPayload(auth), "\n"); len(lines) != want || !strings.Contains(body, Redacted) {
					t.Fatalf("%s: %d lines, want %d:\n%s", coding, len(lines), want, body)
				}
				for _, l := range lines {
					check(t, coding+" body line", l)
				}
				check(t, coding+" header", fmt.Sprint(resp.Header))
			}

			// An unknown coding cannot be scanned: 502, nothing of the body.
			resp, err := c.Get(base + "/body/compress")
			if err != nil {
				t.Fatal(err)
			}
			if body := readAll(t, resp); resp.StatusCode != http.StatusBadGateway || reveals(body, echoSecret) != "" {
				t.Fatalf("unknown coding: %d %q", resp.StatusCode, body)
			}

			for _, path := range []string{"/trailer", "/trailer-cl"} {
				resp, err := c.Get(base + path)
				if err != nil {
					t.Fatal(err)
				}
				body := readAll(t, resp)
				if body != "trailers follow\n" {
					t.Fatalf("%s body %q", path, body)
				}
				if h2 || path == "/trailer" { // HTTP/1.1 carries trailers only when chunked
					for _, k := range []string{"X-Echo", "X-Echo-Hex", "X-Undeclared"} {
						if v := resp.Trailer.Get(k); !strings.Contains(v, Redacted) {
							t.Errorf("%s: trailer %s = %q, want it delivered and redacted", path, k, v)
						}
					}
				}
				check(t, path+" trailer", fmt.Sprint(resp.Trailer))
			}

			var early []textproto.MIMEHeader
			ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
				Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
					early = append(early, h)
					return nil
				},
			})
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/early", nil)
			resp, err = c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			if body := readAll(t, resp); body != "final answer\n" {
				t.Fatalf("early: body %q", body)
			}
			if len(early) != 1 || !strings.Contains(early[0].Get("X-Early"), Redacted) || !strings.Contains(early[0].Get("Link"), "rel=preload") {
				t.Fatalf("103 headers: %v", early)
			}
			check(t, "103 header", fmt.Sprint(early))

			if !h2 { // HTTP/2 has no reason phrase
				early = nil
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/reason", nil)
				resp, err = c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				readAll(t, resp)
				if !strings.Contains(resp.Status, Redacted) || len(early) != 1 {
					t.Fatalf("reason: status %q, %d 1xx", resp.Status, len(early))
				}
				check(t, "status line", resp.Status)
				raw := rawGet(t, e, dst, "/reason")
				if !strings.Contains(raw, "HTTP/1.1 103 Early "+Redacted) || !strings.Contains(raw, "HTTP/1.1 200 OK "+Redacted) {
					t.Errorf("raw answer:\n%s", raw)
				}
				check(t, "raw answer", raw)

				resp, err = c.Get(base + "/badhead")
				if err != nil {
					t.Fatal(err)
				}
				body := readAll(t, resp)
				if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, Redacted) {
					t.Errorf("malformed head: %d %q", resp.StatusCode, body)
				}
				check(t, "502 body", body)
			}
		})
	}

	// WebSocket: upgrades exist on HTTP/1.1 only (an HTTP/2 client would
	// need extended CONNECT, which sluice refuses with every CONNECT).
	t.Run("websocket", func(t *testing.T) {
		frames, head := wsExchange(t, e, dst, "/ws")
		if !strings.Contains(head, "101") || reveals(head, echoSecret) != "" {
			t.Fatalf("101 head: %q", head)
		}
		payload := echoPayload(auth)
		want := []struct {
			fin    bool
			op     byte
			masked bool
			n      int
		}{
			{true, 1, false, len(payload)}, {false, 2, false, len("binary start ") + len(auth) - 5}, {true, 9, false, 5 + len(auth)},
			{false, 0, false, 2}, {true, 0, false, 3 + len(" binary end")},
			{true, 1, true, len("masked ") + len(payload)}, {true, 2, false, 70000 + len(auth) + 100},
			{true, 8, false, 2 + 4 + len(auth)},
		}
		if len(frames) != len(want) {
			t.Fatalf("%d frames, want %d: %+v", len(frames), len(want), frames)
		}
		var msg strings.Builder
		for i, f := range frames {
			w := want[i]
			if f.fin != w.fin || f.op != w.op || f.masked != w.masked || len(f.payload) != w.n {
				t.Errorf("frame %d: fin %v op %d masked %v len %d; want %+v", i, f.fin, f.op, f.masked, len(f.payload), w)
			}
			check(t, fmt.Sprintf("frame %d", i), f.payload)
			if f.op == 2 || f.op == 0 && i < 5 {
				msg.WriteString(f.payload)
			}
			if !strings.Contains(f.payload, "*") && !strings.Contains(f.payload, Redacted[:4]) {
				t.Errorf("frame %d carries no redaction: %q", i, f.payload)
			}
		}
		check(t, "fragmented message", msg.String())
		if !strings.HasPrefix(frames[1].payload+frames[3].payload+frames[4].payload, "binary start ") ||
			!strings.HasSuffix(frames[4].payload, " binary end") {
			t.Errorf("fragmented message mangled: %q", msg.String())
		}

		// An upstream that compresses its frames anyway: refused.
		_, head = wsExchange(t, e, dst, "/ws-deflate")
		if !strings.HasPrefix(head, "HTTP/1.1 502") {
			t.Fatalf("permessage-deflate upgrade: %q", head)
		}
	})

	ev := e.rec.waitKind(t, audit.KindSecret, 1)
	for _, x := range append(e.rec.kind(audit.KindSecret), e.rec.kind(audit.KindHTTP)...) {
		if reveals(fmt.Sprint(x), echoSecret) != "" {
			t.Fatal("secret value in an event")
		}
	}
	if len(ev) == 0 {
		t.Fatal("no secret event")
	}
}

// wsExchange opens a WebSocket on path through the proxy (offering
// permessage-deflate) and reads the frames until the close frame.
func wsExchange(t *testing.T, e *env, dst netip.AddrPort, path string) ([]wsFrame, string) {
	t.Helper()
	c, err := e.dial(context.Background(), dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	tc := tls.Client(c, &tls.Config{ServerName: "api.test", RootCAs: e.sandbox, NextProtos: []string{"http/1.1"}})
	fmt.Fprintf(tc, "GET %s HTTP/1.1\r\nHost: api.test:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n", path, dst.Port())
	br := bufio.NewReader(tc)
	var head strings.Builder
	for {
		line, err := br.ReadString('\n')
		head.WriteString(line)
		if err != nil || line == "\r\n" {
			break
		}
	}
	if !strings.Contains(head.String(), " 101 ") {
		return nil, head.String()
	}
	return readWSFrames(t, br), head.String()
}

// TestTrailersDelivered: trailers reach the sandbox over HTTP/1.1 (chunked)
// and HTTP/2, with and without injected credentials.
func TestTrailersDelivered(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "Grpc-Status")
		if r.URL.Path == "/cl" {
			w.Header().Set("Content-Length", "500")
		}
		io.WriteString(w, strings.Repeat("data ", 100))
		w.(http.Flusher).Flush()
		w.Header().Set("Grpc-Status", "0")
		w.Header().Set(http.TrailerPrefix+"X-Late", "late")
	}))
	// The same handler on an HTTP/1.1-only upstream (chunked trailers).
	up1 := httptest.NewUnstartedServer(up.Config.Handler)
	up1.Config.ErrorLog = log.New(io.Discard, "", 0)
	up1.TLS = upstreamCA.TLSConfig()
	up1.TLS.NextProtos = []string{"http/1.1"}
	up1.StartTLS()
	t.Cleanup(up1.Close)
	dst, dst1 := addrPort(t, up.URL), addrPort(t, up1.URL)
	e := newEnv(t, fmt.Sprintf(`
version: 1
rules:
  - name: api
    hosts: [api.test, api1.test]
    ports: [%d, %d]
    headers:
      - {name: Authorization, type: secret, value: "Bearer {TOKEN}"}
  - name: plain
    hosts: [plain.test, plain1.test]
    ports: [%d, %d]
    headers:
      - {name: X-Plain, type: plaintext, value: "not a secret"}
`, dst.Port(), dst1.Port(), dst.Port(), dst1.Port()))
	e.bind("api.test", dst)
	e.bind("plain.test", dst)
	e.bind("api1.test", dst1)
	e.bind("plain1.test", dst1)
	for _, h2 := range []bool{false, true} {
		for _, host := range []string{"api.test", "plain.test", "api1.test", "plain1.test"} {
			port := dst.Port()
			if strings.Contains(host, "1") {
				port = dst1.Port()
			}
			for _, path := range []string{"/", "/cl"} {
				resp, err := e.client(h2).Get(fmt.Sprintf("https://%s:%d%s", host, port, path))
				if err != nil {
					t.Fatal(err)
				}
				readAll(t, resp)
				if (!h2 || strings.Contains(host, "1")) && path == "/cl" {
					continue // HTTP/1.1 has no trailers after a Content-Length body
				}
				if resp.Trailer.Get("Grpc-Status") != "0" || resp.Trailer.Get("X-Late") != "late" {
					t.Errorf("h2=%v %s%s: trailers %v", h2, host, path, resp.Trailer)
				}
			}
		}
	}
}

// TestRedactStreamsBoundedMemory: a 1 GiB response of unknown length, with
// the secret at its start, split across the upstream's writes and at its
// end, is redacted as it streams: the heap stays bounded and the client
// sees the first bytes before the upstream has sent the rest. With -short
// it streams 64 MiB. Under the race detector, which makes streaming 1 GiB
// take minutes, it streams 64 MiB itself and has the 1 GiB measured by an
// uninstrumented run of itself.
func TestRedactStreamsBoundedMemory(t *testing.T) {
	size := int64(1 << 30)
	if testing.Short() {
		size = 64 << 20
	}
	if mb, err := strconv.Atoi(os.Getenv("SLUICE_BIG_BODY_MB")); err == nil && mb > 0 {
		size = int64(mb) << 20
	}
	var uninstrumented func(*testing.T)
	if raceEnabled && size > 64<<20 {
		// The uninstrumented run (its own process: a compile, then the
		// 1 GiB) goes on while this one streams 64 MiB; it does not touch
		// this process's heap, which this one measures.
		uninstrumented = startUninstrumented(t, "TestRedactStreamsBoundedMemory", size)
		size = 64 << 20
	}
	auth := "Bearer " + echoSecret
	release := make(chan struct{}, 2)
	up := newUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := r.Header.Get("Authorization")
		w.Header().Set("Content-Type", "application/octet-stream")
		io.WriteString(w, got+"\n")
		w.(http.Flusher).Flush()
		// The rest only once the client has the start: the body streams.
		<-release
		block := []byte(strings.Repeat("0123456789abcdef", 2048)) // 32 KiB
		left := size - int64(len(got)+1) - int64(len(got))
		split := len(block) - 7
		for i := 0; left > 0; i++ {
			b := block
			if int64(len(b)) > left {
				b = b[:left]
			}
			if i == 3 { // a secret split across two writes
				copy(b[split:], got[:7])
				w.Write(b)
				w.Write([]byte(got[7:]))
				left -= int64(len(b) + len(got) - 7)
				continue
			}
			if _, err := w.Write(b); err != nil {
				return
			}
			left -= int64(len(b))
		}
		io.WriteString(w, got)
	}))
	dst := addrPort(t, up.URL)
	e := echoEnv(t, dst.Port())
	e.bind("api.test", dst)

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak atomic.Uint64
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
		}
	}()
	// Each of the three echoes of auth becomes Redacted.
	want := size + 3*int64(len(Redacted)-len(auth))
	for _, h2 := range []bool{false, true} {
		start := time.Now()
		c := e.client(h2)
		c.Timeout = 5 * time.Minute
		resp, err := c.Get(fmt.Sprintf("https://api.test:%d/big", dst.Port()))
		if err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReaderSize(resp.Body, 64<<10)
		first, err := br.ReadString('\n')
		if err != nil || first != Redacted+"\n" {
			t.Fatalf("h2=%v: first line %q, %v", h2, first, err)
		}
		release <- struct{}{}
		tail := &tailWriter{n: 4096}
		n, err := io.Copy(tail, br)
		resp.Body.Close()
		n += int64(len(first))
		if err != nil || n != want {
			t.Fatalf("h2=%v: %d bytes (%v), want %d", h2, n, err, want)
		}
		if !strings.HasSuffix(string(tail.b), Redacted) || reveals(string(tail.b), echoSecret) != "" {
			t.Fatalf("h2=%v: body ends %q", h2, tail.b[len(tail.b)-64:])
		}
		t.Logf("h2=%v: %d MiB in %v", h2, size>>20, time.Since(start))
	}
	close(stop)
	sampler.Wait()
	growth := int64(peak.Load()) - int64(base)
	t.Logf("heap in use: base %d MiB, peak %d MiB", base>>20, peak.Load()>>20)
	if growth > 64<<20 {
		t.Fatalf("heap grew by %d MiB while streaming %d MiB", growth>>20, size>>20)
	}
	if ev := e.rec.waitKind(t, audit.KindSecret, 2); len(ev) < 2 {
		t.Fatalf("%d secret events, want one per request", len(ev))
	}
	if uninstrumented != nil {
		t.Run("uninstrumented", uninstrumented)
	}
}

// tailWriter keeps (at least) the last n bytes written.
type tailWriter struct {
	n int
	b []byte
}

func (w *tailWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	if len(w.b) > 2*w.n {
		w.b = append(w.b[:0], w.b[len(w.b)-w.n:]...)
	}
	return len(p), nil
}

// startUninstrumented starts test (of this package) without the race
// detector, streaming size bytes, and returns the function (for a subtest)
// that waits for it and reports its result. A cleanup ends it if that
// function is never called.
func startUninstrumented(t *testing.T, test string, size int64) func(*testing.T) {
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		if goBin, err = exec.LookPath("go"); err != nil {
			t.Fatalf("no go command to run %s without -race: %v", test, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	cmd := exec.CommandContext(ctx, goBin, "test", "-count=1", "-v", "-run", "^"+test+"$", ".")
	cmd.Env = append(os.Environ(), fmt.Sprintf("SLUICE_BIG_BODY_MB=%d", size>>20))
	// Ended early (a failure here, the timeout), the go command and the
	// test binary it runs go together.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("%s without -race: %v", test, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { cancel(); <-done })
	return func(t *testing.T) {
		err := <-done
		done <- err // for the cleanup
		for _, l := range strings.Split(out.String(), "\n") {
			if strings.Contains(l, ".go:") || strings.HasPrefix(l, "---") {
				t.Log(strings.TrimSpace(l))
			}
		}
		if err != nil {
			t.Fatalf("%s without -race: %v\n%s", test, err, out.String())
		}
	}
}

// rawGet sends GET path over HTTP/1.1 through the proxy and returns every
// byte of the answer.
func rawGet(t *testing.T, e *env, dst netip.AddrPort, path string) string {
	t.Helper()
	c, err := e.dial(context.Background(), dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	tc := tls.Client(c, &tls.Config{ServerName: "api.test", RootCAs: e.sandbox, NextProtos: []string{"http/1.1"}})
	fmt.Fprintf(tc, "GET %s HTTP/1.1\r\nHost: api.test:%d\r\nConnection: close\r\n\r\n", path, dst.Port())
	b, _ := io.ReadAll(tc)
	return string(b)
}
