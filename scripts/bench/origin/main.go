// Command origin serves the benchmark's loopback world:
//
//   - an HTTPS upstream (HTTP/1.1 and HTTP/2 by ALPN) on 127.0.0.1 with a
//     certificate for the test names, signed by a CA of its own (ca.pem);
//   - an authoritative DNS server (UDP and TCP) that maps the test names to
//     127.0.0.1 with a long TTL, so caches in front of it keep the answer;
//   - a plain-HTTP stats listener that reports how many requests the
//     upstream answered and how many carried the expected Authorization
//     header (so a row that claims header injection is checked);
//   - a second CA (peer-ca.pem, peer-ca.key) for the peer proxies that
//     re-sign TLS (squid ssl-bump).
//
// It writes the addresses as shell variables to DIR/env and runs until
// SIGTERM or SIGINT. Every listener is on loopback.
//
// Paths on the upstream:
//
//	/            a small body ("ok\n")
//	/bulk?n=N    N bytes of zeros (streamed)
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

var names = []string{"api.bench.test", "splice.bench.test"}

func main() {
	dir := flag.String("dir", "", "directory for env, ca.pem, peer-ca.pem and peer-ca.key (required)")
	token := flag.String("token", "", "expected Authorization value is \"Bearer TOKEN\" (from $BENCH_TOKEN if empty)")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "usage: origin -dir DIR [-token T]")
		os.Exit(2)
	}
	if *token == "" {
		*token = os.Getenv("BENCH_TOKEN")
	}
	want := "Bearer " + *token

	ca, caKey, err := newCA("sluice bench upstream CA")
	check(err)
	check(writePEM(filepath.Join(*dir, "ca.pem"), "CERTIFICATE", ca.Raw, 0o644))
	peer, peerKey, err := newCA("sluice bench peer proxy CA")
	check(err)
	check(writePEM(filepath.Join(*dir, "peer-ca.pem"), "CERTIFICATE", peer.Raw, 0o644))
	keyDER, err := x509.MarshalPKCS8PrivateKey(peerKey)
	check(err)
	check(writePEM(filepath.Join(*dir, "peer-ca.key"), "PRIVATE KEY", keyDER, 0o644))

	leaf, err := newLeaf(ca, caKey, names)
	check(err)

	var total, injected atomic.Int64
	zeros := make([]byte, 256<<10)
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		total.Add(1)
		if r.Header.Get("Authorization") == want {
			injected.Add(1)
		}
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/bulk", func(w http.ResponseWriter, r *http.Request) {
		total.Add(1)
		if r.Header.Get("Authorization") == want {
			injected.Add(1)
		}
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 || n > 8<<30 {
			http.Error(w, "bad n", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		for n > 0 {
			chunk := zeros
			if n < int64(len(chunk)) {
				chunk = chunk[:n]
			}
			if _, err := w.Write(chunk); err != nil {
				return
			}
			n -= int64(len(chunk))
		}
	})

	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	check(err)
	srv := &http.Server{
		Handler: mux,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{leaf},
			NextProtos:   []string{"h2", "http/1.1"},
		},
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// Load generators drop connections mid-handshake when their time
		// is up; those errors are expected and not worth a line each.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()

	statsLn, err := net.Listen("tcp4", "127.0.0.1:0")
	check(err)
	go func() {
		_ = http.Serve(statsLn, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_ = json.NewEncoder(w).Encode(map[string]int64{"total": total.Load(), "injected": injected.Load()})
		}))
	}()

	dnsAddr, stopDNS, err := serveDNS(names)
	check(err)
	defer stopDNS()

	env := fmt.Sprintf("UP_ADDR=%s\nUP_PORT=%d\nUP_CA=%s\nSTATS_ADDR=%s\nDNS_ADDR=%s\nPEER_CA=%s\nPEER_KEY=%s\n",
		ln.Addr(), ln.Addr().(*net.TCPAddr).Port, filepath.Join(*dir, "ca.pem"), statsLn.Addr(), dnsAddr,
		filepath.Join(*dir, "peer-ca.pem"), filepath.Join(*dir, "peer-ca.key"))
	envFile := filepath.Join(*dir, "env")
	check(os.WriteFile(envFile+".tmp", []byte(env), 0o644))
	check(os.Rename(envFile+".tmp", envFile))

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}

// serveDNS answers A queries for names with 127.0.0.1 (TTL one hour),
// AAAA with no data, and everything else with NXDOMAIN, on one loopback
// port for UDP and TCP.
func serveDNS(names []string) (string, func(), error) {
	known := map[string]bool{}
	for _, n := range names {
		known[dns.Fqdn(n)] = true
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		if len(r.Question) != 1 {
			m.Rcode = dns.RcodeFormatError
			_ = w.WriteMsg(m)
			return
		}
		q := r.Question[0]
		switch {
		case !known[strings.ToLower(q.Name)]:
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 3600},
				A:   net.IPv4(127, 0, 0, 1).To4(),
			})
		}
		if m.Rcode != dns.RcodeSuccess || len(m.Answer) == 0 {
			m.Ns = []dns.RR{&dns.SOA{
				Hdr: dns.RR_Header{Name: "bench.test.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 3600},
				Ns:  "ns.bench.test.", Mbox: "hostmaster.bench.test.", Serial: 1,
				Refresh: 3600, Retry: 600, Expire: 86400, Minttl: 3600,
			}}
		}
		_ = w.WriteMsg(m)
	})
	var pc net.PacketConn
	var ln net.Listener
	var err error
	for range 20 { // the TCP port must match the UDP one
		if pc, err = net.ListenPacket("udp4", "127.0.0.1:0"); err != nil {
			return "", nil, err
		}
		if ln, err = net.Listen("tcp4", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
	}
	if err != nil {
		return "", nil, err
	}
	servers := []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}}
	for _, s := range servers {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go func() { _ = s.ActivateAndServe() }()
		select {
		case <-started:
		case <-time.After(5 * time.Second):
			return "", nil, fmt.Errorf("dns server did not start")
		}
	}
	return pc.LocalAddr().String(), func() {
		for _, s := range servers {
			_ = s.Shutdown()
		}
	}, nil
}

func newCA(cn string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(7 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func newLeaf(ca *x509.Certificate, caKey *ecdsa.PrivateKey, dnsNames []string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: dnsNames[0]},
		DNSNames:     dnsNames,
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der, ca.Raw}, PrivateKey: key}, nil
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "origin:", err)
		os.Exit(1)
	}
}
