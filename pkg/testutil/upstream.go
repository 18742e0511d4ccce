package testutil

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"github.com/sluice-dev/sluice/pkg/tlsca"
)

// DNSServer is an authoritative loopback DNS server for made-up names. It
// logs every query name it receives, so tests can prove that a name never
// reached upstream.
type DNSServer struct {
	Addr string // 127.0.0.1:PORT, UDP and TCP

	mu      sync.Mutex
	records map[string][]netip.Addr
	ttl     uint32 // of answers and of the negative-answer SOA
	queries []string
	down    bool
	servers []*dns.Server
}

// StartDNS serves records (name → addresses; names without a trailing dot)
// on 127.0.0.1, UDP and TCP on one port.
func StartDNS(records map[string][]string) (*DNSServer, error) {
	s := &DNSServer{records: map[string][]netip.Addr{}, ttl: 300}
	for name, addrs := range records {
		for _, a := range addrs {
			ip, err := netip.ParseAddr(a)
			if err != nil {
				return nil, err
			}
			s.records[dns.Fqdn(strings.ToLower(name))] = append(s.records[dns.Fqdn(strings.ToLower(name))], ip)
		}
	}
	var pc net.PacketConn
	var ln net.Listener
	var err error
	for i := 0; i < 20; i++ {
		pc, err = net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ln, err = net.Listen("tcp4", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
	}
	if err != nil {
		return nil, err
	}
	s.Addr = pc.LocalAddr().String()
	h := dns.HandlerFunc(s.serve)
	s.servers = []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}}
	for _, srv := range s.servers {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		select {
		case <-started:
		case <-time.After(3 * time.Second):
			return nil, errors.New("dns server did not start")
		}
	}
	return s, nil
}

// Set replaces the addresses of name.
func (s *DNSServer) Set(name string, addrs ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ips []netip.Addr
	for _, a := range addrs {
		ips = append(ips, netip.MustParseAddr(a))
	}
	s.records[dns.Fqdn(strings.ToLower(name))] = ips
}

// SetDown makes the server drop every query (a dead upstream) or answer again.
func (s *DNSServer) SetDown(down bool) {
	s.mu.Lock()
	s.down = down
	s.mu.Unlock()
}

// Queries returns the query names received so far, lower case, without the
// trailing dot.
func (s *DNSServer) Queries() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.queries...)
}

// Received reports whether any query for name (or a name below it) arrived.
func (s *DNSServer) Received(name string) bool {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	for _, q := range s.Queries() {
		if q == name || strings.HasSuffix(q, "."+name) {
			return true
		}
	}
	return false
}

func (s *DNSServer) serve(w dns.ResponseWriter, r *dns.Msg) {
	s.mu.Lock()
	down := s.down
	for _, q := range r.Question {
		s.queries = append(s.queries, strings.TrimSuffix(strings.ToLower(q.Name), "."))
	}
	s.mu.Unlock()
	if down || len(r.Question) != 1 {
		return
	}
	q := r.Question[0]
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	s.mu.Lock()
	addrs, ok := s.records[strings.ToLower(q.Name)]
	ttl := s.ttl
	s.mu.Unlock()
	if !ok {
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{&dns.SOA{Hdr: dns.RR_Header{Name: "test.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: min(ttl, 60)},
			Ns: "ns.test.", Mbox: "hostmaster.test.", Serial: 1, Refresh: 60, Retry: 60, Expire: 60, Minttl: min(ttl, 60)}}
	}
	for _, a := range addrs {
		hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: ttl}
		switch {
		case a.Is4() && q.Qtype == dns.TypeA:
			hdr.Rrtype = dns.TypeA
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: a.AsSlice()})
		case a.Is6() && q.Qtype == dns.TypeAAAA:
			hdr.Rrtype = dns.TypeAAAA
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
		}
	}
	_ = w.WriteMsg(m)
}

// Close stops the server.
func (s *DNSServer) Close() {
	for _, srv := range s.servers {
		_ = srv.Shutdown()
	}
}

// Request is what an HTTPS upstream recorded of one request.
type Request struct {
	Method, Host, Path string
	Header             http.Header
	Proto              string
}

// HTTPSServer is a loopback HTTPS upstream with a certificate for the given
// names, signed by its own CA (CAFile), recording every request.
type HTTPSServer struct {
	Addr   string // 127.0.0.1:PORT
	Port   int
	CAFile string

	mu       sync.Mutex
	requests []Request
	srv      *http.Server
	ln       net.Listener
}

// StartHTTPS starts the server; dir receives upstream-ca.pem. handler may
// be nil for the default answer "hello from upstream PATH".
func StartHTTPS(dir string, names []string, handler http.Handler) (*HTTPSServer, error) {
	ca, err := tlsca.New("sluice test upstream", 24*time.Hour)
	if err != nil {
		return nil, err
	}
	caFile := filepath.Join(dir, "upstream-ca.pem")
	if err := os.WriteFile(caFile, ca.CertPEM(), 0o644); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &HTTPSServer{Addr: ln.Addr().String(), Port: ln.Addr().(*net.TCPAddr).Port, CAFile: caFile, ln: ln}
	if handler == nil {
		handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from upstream %s\n", r.URL.Path)
		})
	}
	allowed := map[string]bool{}
	for _, n := range names {
		allowed[n] = true
	}
	tcfg := &tls.Config{
		NextProtos: []string{"h2", "http/1.1"},
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			name := hello.ServerName
			if name == "" {
				name = "127.0.0.1"
			}
			if !allowed[name] && name != "127.0.0.1" {
				return nil, fmt.Errorf("no certificate for %q", name)
			}
			return ca.Leaf(name)
		},
	}
	s.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.mu.Lock()
			s.requests = append(s.requests, Request{Method: r.Method, Host: r.Host, Path: r.URL.Path, Header: r.Header.Clone(), Proto: r.Proto})
			s.mu.Unlock()
			handler.ServeHTTP(w, r)
		}),
		TLSConfig:         tcfg,
		ReadHeaderTimeout: 10 * time.Second,
	}
	go s.srv.ServeTLS(ln, "", "")
	return s, nil
}

// Requests returns the requests recorded so far.
func (s *HTTPSServer) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Close stops the server.
func (s *HTTPSServer) Close() { _ = s.srv.Close() }
