package proxy

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// clientHello captures the first flight of a real crypto/tls client.
func clientHello(t testing.TB, sni string, alpn ...string) []byte {
	t.Helper()
	a, b := net.Pipe()
	go func() {
		tls.Client(a, &tls.Config{ServerName: sni, NextProtos: alpn, InsecureSkipVerify: sni == ""}).Handshake()
		a.Close()
	}()
	buf := make([]byte, 64<<10)
	var got []byte
	for {
		n, err := b.Read(buf)
		got = append(got, buf[:n]...)
		if _, _, perr := parseClientHello(got); !errors.Is(perr, errNeedMore) || err != nil {
			break
		}
	}
	b.Close()
	return got
}

// fragment re-splits the handshake in rec into records of at most size bytes.
func fragment(rec []byte, size int) []byte {
	body := rec[5:]
	var out []byte
	for len(body) > 0 {
		n := min(size, len(body))
		out = append(out, 0x16, rec[1], rec[2], byte(n>>8), byte(n))
		out = append(out, body[:n]...)
		body = body[n:]
	}
	return out
}

func TestParseClientHello(t *testing.T) {
	hello := clientHello(t, "API.Example.com", "h2", "http/1.1")
	noSNI := clientHello(t, "")
	ipSNI := clientHello(t, "10.0.0.1") // Go sends no SNI for IP literals
	tests := []struct {
		name    string
		data    []byte
		wantSNI string
		wantH2  bool
		wantErr error
	}{
		{name: "go client", data: hello, wantSNI: "API.Example.com", wantH2: true},
		{name: "fragmented into 7-byte records", data: fragment(hello, 7), wantSNI: "API.Example.com", wantH2: true},
		{name: "fragmented into 1-byte records", data: fragment(hello, 1), wantSNI: "API.Example.com", wantH2: true},
		{name: "no sni", data: noSNI},
		{name: "ip literal", data: ipSNI},
		{name: "truncated", data: hello[:len(hello)-10], wantErr: errNeedMore},
		{name: "only header", data: hello[:3], wantErr: errNeedMore},
		{name: "http", data: []byte("GET / HTTP/1.1\r\n"), wantErr: errNotHello},
		{name: "alert record", data: []byte{0x15, 3, 1, 0, 2, 2, 40}, wantErr: errNotHello},
		{name: "server hello", data: []byte{0x16, 3, 3, 0, 4, 2, 0, 0, 0}, wantErr: errNotHello},
		{name: "zero length record", data: []byte{0x16, 3, 1, 0, 0}, wantErr: errBadHello},
		{name: "huge handshake", data: []byte{0x16, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff}, wantErr: errHelloTooBig},
		{name: "empty body", data: []byte{0x16, 3, 1, 0, 4, 1, 0, 0, 0}, wantErr: errBadHello},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sni, h2, err := parseClientHello(tt.data)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			}
			if string(sni) != tt.wantSNI || h2 != tt.wantH2 {
				t.Fatalf("sni %q h2 %v, want %q %v", sni, h2, tt.wantSNI, tt.wantH2)
			}
		})
	}
}

func TestParseClientHelloBadSNI(t *testing.T) {
	base := clientHello(t, "aaaaaaaaaaaa.example")
	i := strings.Index(string(base), "aaaaaaaaaaaa.example")
	for _, tt := range []struct {
		name string
		repl string
	}{
		{name: "nul byte", repl: "aaaa\x00aaaaaaa.example"},
		{name: "space", repl: "aaaa aaaaaaa.example"},
		{name: "percent", repl: "aaaa%2faaaaaa.example"},
		{name: "empty label", repl: "aaaaaaaaaaaa..xample"},
		{name: "colon", repl: "aaaaaaaaaaaa.exa:443"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := append([]byte(nil), base...)
			copy(d[i:], tt.repl)
			if _, _, err := parseClientHello(d); !errors.Is(err, errBadSNI) {
				t.Fatalf("err %v, want errBadSNI", err)
			}
		})
	}
}

func TestParseHTTPHead(t *testing.T) {
	tests := []struct {
		name     string
		data     string
		wantHost string
		wantErr  error
	}{
		{name: "origin form", data: "GET /x HTTP/1.1\r\nHost: Example.COM:8080\r\n\r\n", wantHost: "example.com"},
		{name: "absolute form wins", data: "GET http://a.test/x HTTP/1.1\r\nHost: b.test\r\n\r\n", wantHost: "a.test"},
		{name: "ipv6 host", data: "GET / HTTP/1.1\r\nhost: [::1]:80\r\n\r\n", wantHost: "::1"},
		{name: "no host (HTTP/1.0)", data: "GET / HTTP/1.0\r\n\r\n"},
		{name: "bare LF", data: "GET / HTTP/1.1\nHost: a.test\n\n", wantHost: "a.test"},
		{name: "partial", data: "GET / HTTP/1.1\r\nHost: a.te", wantErr: errNeedMore},
		{name: "partial method", data: "GE", wantErr: errNeedMore},
		{name: "tls", data: "\x16\x03\x01", wantErr: errNotHTTP},
		{name: "ssh", data: "SSH-2.0-OpenSSH\r\n", wantErr: errNotHTTP},
		{name: "lowercase method", data: "get / HTTP/1.1\r\n\r\n", wantErr: errNotHTTP},
		{name: "http2 preface", data: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", wantErr: errNotHTTP},
		{name: "conflicting hosts", data: "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", wantErr: errBadHost},
		{name: "userinfo", data: "GET http://a.test@b.test/ HTTP/1.1\r\n\r\n", wantErr: errBadHost},
		{name: "garbage host", data: "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", wantErr: errBadHost},
		{name: "nul in host", data: "GET / HTTP/1.1\r\nHost: a\x00.test\r\n\r\n", wantErr: errBadHost},
		{name: "head too long", data: "GET / HTTP/1.1\r\nX: " + strings.Repeat("a", maxHTTPHeadLn), wantErr: errNotHTTP},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := parseHTTPHead([]byte(tt.data))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			}
			if h.host != tt.wantHost {
				t.Fatalf("host %q, want %q", h.host, tt.wantHost)
			}
		})
	}
}

func TestHostOnly(t *testing.T) {
	for _, tt := range []struct {
		in, want string
		ok       bool
	}{
		{"Example.com", "example.com", true},
		{"example.com.", "example.com", true},
		{"example.com:443", "example.com", true},
		{"10.0.0.1:80", "10.0.0.1", true},
		{"[::ffff:10.0.0.1]:80", "10.0.0.1", true},
		{"::1", "::1", true},
		{"[fe80::1%eth0]:80", "", false},
		{"example.com:http", "", false},
		{"example.com:123456", "", false},
		{"a_b.example", "a_b.example", true},
		{"", "", false},
		{"ex ample.com", "", false},
	} {
		got, ok := hostOnly(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("hostOnly(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestDotSegmentsAndAuditPath(t *testing.T) {
	for _, tt := range []struct {
		p    string
		want bool
	}{{"/a/../b", true}, {"/a/./b", true}, {"/..", true}, {"/a/b..c/", false}, {"/", false}, {"/.well-known/x", false}} {
		if got := hasDotSegment(tt.p); got != tt.want {
			t.Errorf("hasDotSegment(%q) = %v", tt.p, got)
		}
	}
	if got := auditPath("/s", "q=secret&page=2&flag"); strings.Contains(got, "secret") || !strings.HasPrefix(got, "/s?q=REDACTED&page=REDACTED") {
		t.Errorf("auditPath = %q", got)
	}
}

// The seed corpora live in testdata/fuzz; regenerate the ClientHello seeds
// with SLUICE_WRITE_SEEDS=1.
func TestWriteSeeds(t *testing.T) {
	if os.Getenv("SLUICE_WRITE_SEEDS") == "" {
		t.Skip("set SLUICE_WRITE_SEEDS=1 to rewrite the fuzz seed corpus")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzPeekClientHello")
	os.MkdirAll(dir, 0o755)
	h := clientHello(t, "api.example.com", "h2", "http/1.1")
	for name, d := range map[string][]byte{
		"go_client":   h,
		"fragmented":  fragment(h, 13),
		"no_sni":      clientHello(t, ""),
		"truncated":   h[:len(h)/2],
		"not_a_hello": []byte("GET / HTTP/1.1\r\n"),
	} {
		content := "go test fuzz v1\n[]byte(" + quoteBytes(d) + ")\n"
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func quoteBytes(b []byte) string {
	var sb strings.Builder
	sb.WriteByte('"')
	for _, c := range b {
		sb.WriteString("\\x")
		sb.WriteByte("0123456789abcdef"[c>>4])
		sb.WriteByte("0123456789abcdef"[c&15])
	}
	sb.WriteByte('"')
	return sb.String()
}

func FuzzPeekClientHello(f *testing.F) {
	f.Add(clientHello(f, "api.example.com", "h2"))
	f.Add(fragment(clientHello(f, "x.test"), 5))
	f.Fuzz(func(t *testing.T, data []byte) {
		sni, _, err := parseClientHello(data)
		if err != nil && sni != nil {
			t.Fatalf("sni %q with error %v", sni, err)
		}
		if len(sni) > 0 {
			if !validHostBytes(sni) {
				t.Fatalf("invalid sni %q accepted", sni)
			}
			if _, ok := hostOnly(string(sni)); !ok {
				t.Fatalf("sni %q accepted by the parser but not by hostOnly", sni)
			}
		}
		// Any prefix of an accepted hello needs more data or fails, never
		// yields another name.
		if err == nil && len(data) > 1 {
			if s2, _, err2 := parseClientHello(data[:len(data)/2]); err2 == nil && string(s2) != string(sni) {
				t.Fatalf("prefix parsed to %q, whole to %q", s2, sni)
			}
		}
	})
}

func FuzzParseHTTPHead(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
		"POST http://a.test:80/x HTTP/1.1\r\nHost: b\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := parseHTTPHead(data)
		if err != nil {
			return
		}
		if h.host != "" {
			if again, ok := hostOnly(h.host); !ok || again != h.host {
				t.Fatalf("host %q not normal (%q, %v)", h.host, again, ok)
			}
		}
	})
}
