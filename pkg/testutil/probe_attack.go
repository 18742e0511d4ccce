package testutil

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Probe modes used by the adversarial end-to-end tests (issue 10). Their
// targets carry several fields separated by "|"; a payload field is the
// path of a file holding the bytes to send.
//
//	dns       "udp|tcp SERVER NAME QTYPE"       → "ok RCODE n=ANSWERS a=FIRST" or "error ERRNO"
//	rawtcp    "ADDR|PAYLOADFILE"                → "ok REPLY-STATUS-LINES" (all "HTTP/x NNN" seen)
//	rawtls    "ADDR|SNI|PAYLOADFILE"            → the same over TLS (roots: SSL_CERT_FILE)
//	slowtls   "ADDR|SNI|DELAY|PAYLOADFILE"      → rawtls, waiting DELAY after connect before
//	                                              the ClientHello (a client slowed by load)
//	h2        "ADDR|SNI|AUTHORITY|HOST|PATH"    → "ok status=NNN" (HOST "" sends no host field)
//	h2m       "ADDR|SNI|METHOD|AUTHORITY|HOST|PATH" → the same with a method (CONNECT sends
//	                                              no :scheme and no :path)
//	doh       "DOHURL|NAME|PORT"                → resolves NAME through DoH, then connects to it
//	tcpmany   "ADDR|N"                          → "ok eperm=E connected=C other=O"
//	forkbomb  "ADDR|PROCS|N"                    → PROCS concurrent tcpmany children, summed
//	manyconns "ADDR|SNI|N|PATH"                 → N TLS connections open at once, one GET each,
//	                                              all held until the last answered:
//	                                              "ok ok=N failed=F firsterr=..."
//	mixed     "DURATION|APIPORT|CANARY|DNSADDR" → mixed traffic until DURATION is over (see
//	                                              probeMixed): "ok k=v ..." counters
//	hold      "ADDR|FLAGFILE"                   → connects, writes FLAGFILE.ready, waits for
//	                                              FLAGFILE, then reuses the old connection and
//	                                              dials a new one: "ok old=REPLY new=OUTCOME"
func attackProbe(mode, target string) (string, bool) {
	f := strings.Split(target, "|")
	switch mode {
	case "dns":
		if len(f) != 4 {
			return "error dns probe needs 4 fields", true
		}
		return probeDNS(f[0], f[1], f[2], f[3]), true
	case "rawtcp":
		if len(f) != 2 {
			return "error rawtcp probe needs 2 fields", true
		}
		return probeRaw(f[0], "", f[1]), true
	case "rawtls":
		if len(f) != 3 {
			return "error rawtls probe needs 3 fields", true
		}
		return probeRaw(f[0], f[1], f[2]), true
	case "slowtls":
		if len(f) != 4 {
			return "error slowtls probe needs 4 fields", true
		}
		d, err := time.ParseDuration(f[2])
		if err != nil {
			return "error " + err.Error(), true
		}
		slowStart = d
		return probeRaw(f[0], f[1], f[3]), true
	case "h2":
		if len(f) != 5 {
			return "error h2 probe needs 5 fields", true
		}
		return probeH2(f[0], f[1], "GET", f[2], f[3], f[4]), true
	case "h2m":
		if len(f) != 6 {
			return "error h2m probe needs 6 fields", true
		}
		return probeH2(f[0], f[1], f[2], f[3], f[4], f[5]), true
	case "doh":
		if len(f) != 3 {
			return "error doh probe needs 3 fields", true
		}
		return probeDoH(f[0], f[1], f[2]), true
	case "tcpmany":
		if len(f) != 2 {
			return "error tcpmany probe needs 2 fields", true
		}
		n, _ := strconv.Atoi(f[1])
		e, c, o := tcpMany(f[0], n)
		return fmt.Sprintf("ok eperm=%d connected=%d other=%d", e, c, o), true
	case "forkbomb":
		if len(f) != 3 {
			return "error forkbomb probe needs 3 fields", true
		}
		return probeForkBomb(f[0], f[1], f[2]), true
	case "manyconns":
		if len(f) != 4 {
			return "error manyconns probe needs 4 fields", true
		}
		return probeManyConns(f[0], f[1], f[2], f[3]), true
	case "mixed":
		if len(f) != 4 {
			return "error mixed probe needs 4 fields", true
		}
		return probeMixed(f[0], f[1], f[2], f[3]), true
	case "hold":
		if len(f) != 2 {
			return "error hold probe needs 2 fields", true
		}
		return probeHold(f[0], f[1]), true
	}
	return "", false
}

func probeDNS(network, server, name, qtype string) string {
	t, ok := dns.StringToType[strings.ToUpper(qtype)]
	if !ok {
		return "error unknown qtype " + qtype
	}
	m := new(dns.Msg)
	m.SetQuestion(name, t) // name may hold escapes such as \000
	m.RecursionDesired = true
	c := &dns.Client{Net: network, Timeout: 3 * time.Second}
	r, _, err := c.Exchange(m, server)
	if err != nil {
		return "error " + errnoName(err)
	}
	first := "-"
	for _, rr := range r.Answer {
		switch a := rr.(type) {
		case *dns.A:
			first = a.A.String()
		case *dns.AAAA:
			first = a.AAAA.String()
		default:
			continue
		}
		break
	}
	return fmt.Sprintf("ok %s n=%d a=%s", dns.RcodeToString[r.Rcode], len(r.Answer), first)
}

// slowStart delays the first byte of probeRaw (slowtls).
var slowStart time.Duration

// probeRaw sends the payload file's bytes (over TLS when sni is set) and
// reports the HTTP status lines of everything the server answered.
func probeRaw(addr, sni, payloadFile string) string {
	payload, err := os.ReadFile(payloadFile)
	if err != nil {
		return "error " + err.Error()
	}
	var c net.Conn
	c, err = net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return "error " + errnoName(err)
	}
	defer c.Close()
	time.Sleep(slowStart)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if sni != "" {
		tc := tls.Client(c, &tls.Config{ServerName: sni, NextProtos: []string{"http/1.1"}, InsecureSkipVerify: true})
		if err := tc.Handshake(); err != nil {
			return "error tls: " + err.Error()
		}
		c = tc
	}
	if _, err := c.Write(payload); err != nil {
		return "error write: " + errnoName(err)
	}
	reply, _ := io.ReadAll(io.LimitReader(c, 1<<20))
	var status []string
	sc := bufio.NewScanner(bytes.NewReader(reply))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if l := sc.Text(); strings.HasPrefix(l, "HTTP/1.") {
			status = append(status, strings.TrimSpace(l))
		}
	}
	if len(status) == 0 {
		return fmt.Sprintf("ok no-status bytes=%d", len(reply))
	}
	return "ok " + strings.Join(status, ";")
}

// probeH2 sends one HTTP/2 GET with the given :authority and host header
// fields, written with a raw framer so that they may disagree.
func probeH2(addr, sni, method, authority, host, path string) string {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return "error " + errnoName(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	tc := tls.Client(c, &tls.Config{ServerName: sni, NextProtos: []string{"h2"}, InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		return "error tls: " + err.Error()
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
		return "error alpn " + p
	}
	if _, err := io.WriteString(tc, http2.ClientPreface); err != nil {
		return "error " + err.Error()
	}
	fr := http2.NewFramer(tc, tc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		return "error " + err.Error()
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, kv := range [][2]string{{":method", method}, {":scheme", "https"}, {":authority", authority}, {":path", path}} {
		if kv[1] == "" && kv[0] == ":authority" || method == "CONNECT" && (kv[0] == ":scheme" || kv[0] == ":path") {
			continue
		}
		_ = enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
	}
	if host != "" {
		_ = enc.WriteField(hpack.HeaderField{Name: "host", Value: host})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		return "error " + err.Error()
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return "error read: " + err.Error()
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID == 1 {
				return "ok status=" + f.PseudoValue("status")
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == 1 {
				return "error rst " + f.ErrCode.String()
			}
		case *http2.GoAwayFrame:
			return "error goaway " + f.ErrCode.String()
		}
	}
}

// probeDoH resolves name with a DNS-over-HTTPS POST to url (through
// whatever the sandbox allows), then connects to the answer.
func probeDoH(url, name, port string) string {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	q, _ := m.Pack()
	cl := &http.Client{Timeout: 20 * time.Second}
	resp, err := cl.Post(url, "application/dns-message", bytes.NewReader(q))
	if err != nil {
		return "error doh: " + errnoName(err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Sprintf("error doh status %d", resp.StatusCode)
	}
	var r dns.Msg
	if err := r.Unpack(body); err != nil {
		return "error doh answer: " + err.Error()
	}
	var addr netip.Addr
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			addr, _ = netip.AddrFromSlice(a.A.To4())
		}
	}
	if !addr.IsValid() {
		return "error doh: no address"
	}
	c, err := net.DialTimeout("tcp", net.JoinHostPort(addr.String(), port), 3*time.Second)
	if err != nil {
		return "error " + errnoName(err) + " resolved=" + addr.String()
	}
	c.Close()
	return "ok connected resolved=" + addr.String()
}

func tcpMany(addr string, n int) (eperm, connected, other int) {
	for i := 0; i < n; i++ {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		switch {
		case err == nil:
			connected++
			c.Close()
		case errnoName(err) == "EPERM":
			eperm++
		default:
			other++
		}
	}
	return
}

func probeForkBomb(addr, procs, n string) string {
	p, _ := strconv.Atoi(procs)
	var mu sync.Mutex
	var eperm, connected, other, failed int
	var wg sync.WaitGroup
	for i := 0; i < p; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(os.Args[0], "-test.run=^$", addr+"|"+n)
			cmd.Env = append(os.Environ(), probeEnv+"=tcpmany")
			out, err := cmd.Output()
			var e, c, o int
			_, serr := fmt.Sscanf(strings.TrimSpace(string(out)), "ok eperm=%d connected=%d other=%d", &e, &c, &o)
			mu.Lock()
			defer mu.Unlock()
			if err != nil || serr != nil {
				failed++
				return
			}
			eperm, connected, other = eperm+e, connected+c, other+o
		}()
	}
	wg.Wait()
	return fmt.Sprintf("ok eperm=%d connected=%d other=%d failed=%d", eperm, connected, other, failed)
}

func probeHold(addr, flag string) string {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return "error first dial: " + errnoName(err)
	}
	defer c.Close()
	if err := os.WriteFile(flag+".ready", nil, 0o644); err != nil {
		return "error " + err.Error()
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(flag); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return "error timed out waiting for " + flag
		}
		time.Sleep(20 * time.Millisecond)
	}
	old := "error"
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("ping\n")); err == nil {
		buf := make([]byte, 64)
		if n, err := c.Read(buf); err == nil {
			old = strings.TrimSpace(string(buf[:n]))
		} else {
			old = "error-" + errnoName(err)
		}
	} else {
		old = "error-" + errnoName(err)
	}
	nw := "connected"
	if c2, err := net.DialTimeout("tcp", addr, 3*time.Second); err != nil {
		nw = errnoName(err)
	} else {
		c2.Close()
	}
	return "ok old=" + old + " new=" + nw
}

// ClientHello builds a TLS 1.2-style ClientHello record carrying the given
// server_name bytes verbatim (no validation: tests use it to send NUL
// bytes, trailing dots, several names). With no names the extension is
// left out. bodyPad appends that many bytes of a padding extension.
func ClientHello(names [][]byte, bodyPad int) []byte {
	var body []byte
	body = append(body, 3, 3)                      // client_version TLS 1.2
	body = append(body, make([]byte, 32)...)       // random
	body = append(body, 0)                         // session id
	body = append(body, 0, 4, 0x13, 1, 0xc0, 0x2f) // cipher suites
	body = append(body, 1, 0)                      // compression: null
	var ext []byte
	if len(names) > 0 {
		var list []byte
		for _, n := range names {
			list = append(list, 0)
			list = binary.BigEndian.AppendUint16(list, uint16(len(n)))
			list = append(list, n...)
		}
		ext = binary.BigEndian.AppendUint16(ext, 0) // server_name
		ext = binary.BigEndian.AppendUint16(ext, uint16(len(list)+2))
		ext = binary.BigEndian.AppendUint16(ext, uint16(len(list)))
		ext = append(ext, list...)
	}
	if bodyPad > 0 {
		ext = binary.BigEndian.AppendUint16(ext, 21) // padding
		ext = binary.BigEndian.AppendUint16(ext, uint16(bodyPad))
		ext = append(ext, make([]byte, bodyPad)...)
	}
	body = binary.BigEndian.AppendUint16(body, uint16(len(ext)))
	body = append(body, ext...)
	hs := []byte{1, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}
	hs = append(hs, body...)
	// Split into records of at most 16 KiB.
	var out []byte
	for len(hs) > 0 {
		n := min(len(hs), 1<<14)
		out = append(out, 0x16, 3, 1, byte(n>>8), byte(n))
		out = append(out, hs[:n]...)
		hs = hs[n:]
	}
	return out
}

// probeManyConns opens n TLS connections to addr (SNI sni), sends one GET on
// each and keeps every connection open until all have answered (or failed),
// then closes them. Dials run 256 at a time.
func probeManyConns(addr, sni, count, path string) string {
	n, _ := strconv.Atoi(count)
	var mu sync.Mutex
	var conns []net.Conn
	var ok, failed int
	firstErr := "-"
	sem := make(chan struct{}, 256)
	var wg sync.WaitGroup
	req := "GET " + path + " HTTP/1.1\r\nHost: " + sni + "\r\n\r\n"
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := func() (net.Conn, error) {
				c, err := net.DialTimeout("tcp", addr, 30*time.Second)
				if err != nil {
					return nil, err
				}
				_ = c.SetDeadline(time.Now().Add(60 * time.Second))
				tc := tls.Client(c, &tls.Config{ServerName: sni, InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
				if _, err := io.WriteString(tc, req); err != nil {
					c.Close()
					return nil, err
				}
				resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
				if err != nil {
					c.Close()
					return nil, err
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					c.Close()
					return nil, fmt.Errorf("status %d", resp.StatusCode)
				}
				_ = c.SetDeadline(time.Time{})
				return tc, nil
			}()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				if firstErr == "-" {
					firstErr = strings.ReplaceAll(errnoName(err), " ", "_")
				}
				return
			}
			ok++
			conns = append(conns, c)
		}()
	}
	wg.Wait()
	// Everything is open at once now; hold briefly so the caller can sample.
	if hold := os.Getenv("SLUICE_PROBE_HOLD"); hold != "" {
		d, _ := time.ParseDuration(hold)
		time.Sleep(d)
	}
	for _, c := range conns {
		c.Close()
	}
	return fmt.Sprintf("ok ok=%d failed=%d firsterr=%s", ok, failed, firstErr)
}

// probeMixed generates a mix of traffic until the duration is over: DNS for
// two allowed names and a forbidden one, intercepted HTTPS on a kept-alive
// connection (allowed path and refused path), spliced HTTPS on a fresh
// connection each time, and a connect to a forbidden listener. Each
// operation counts as ok, refused (the policy's expected refusal) or
// err (anything else: a lost connection).
func probeMixed(duration, apiPort, canary, dnsAddr string) string {
	d, err := time.ParseDuration(duration)
	if err != nil {
		return "error " + err.Error()
	}
	dialAPI := func(ctx context.Context, network, _ string) (net.Conn, error) {
		var dd net.Dialer
		return dd.DialContext(ctx, network, net.JoinHostPort("127.0.0.1", apiPort))
	}
	keep := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DialContext: dialAPI,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, MaxIdleConnsPerHost: 1}}
	fresh := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DialContext: dialAPI,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true}}
	var ok, refused, errs int
	firstErr := "-"
	fail := func(op string, err error) {
		errs++
		if firstErr == "-" {
			firstErr = strings.ReplaceAll(op+":"+errnoName(err), " ", "_")
		}
	}
	get := func(c *http.Client, url string, want int) {
		resp, err := c.Get(url)
		if err != nil {
			fail(url, err)
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch {
		case resp.StatusCode == want && want == http.StatusOK:
			ok++
		case resp.StatusCode == want:
			refused++
		default:
			fail(url, fmt.Errorf("status %d", resp.StatusCode))
		}
	}
	dnsq := func(name string, wantRcode int) {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		c := &dns.Client{Timeout: 5 * time.Second}
		r, _, err := c.Exchange(m, dnsAddr)
		switch {
		case err != nil:
			fail("dns "+name, err)
		case r.Rcode != wantRcode:
			fail("dns "+name, fmt.Errorf("rcode %s", dns.RcodeToString[r.Rcode]))
		case wantRcode == dns.RcodeSuccess:
			ok++
		default:
			refused++
		}
	}
	end := time.Now().Add(d)
	cycles := 0
	for time.Now().Before(end) {
		cycles++
		dnsq("allowed.test.", dns.RcodeSuccess)
		dnsq("plain.test.", dns.RcodeSuccess)
		dnsq("forbidden.test.", dns.RcodeNameError)
		get(keep, "https://allowed.test:"+apiPort+"/ok", http.StatusOK)
		get(keep, "https://allowed.test:"+apiPort+"/admin", http.StatusForbidden)
		get(fresh, "https://plain.test:"+apiPort+"/x", http.StatusOK)
		if c, err := net.DialTimeout("tcp", canary, 3*time.Second); err == nil {
			c.Close()
			fail("canary", errors.New("connected"))
		} else if errnoName(err) == "EPERM" {
			refused++
		} else {
			fail("canary", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Sprintf("ok cycles=%d ok=%d refused=%d err=%d firsterr=%s", cycles, ok, refused, errs, firstErr)
}
