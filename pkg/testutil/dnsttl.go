package testutil

import (
	"errors"
	"net"
	"time"

	"github.com/miekg/dns"
)

// StartDNSTTL is StartDNS with every answer's TTL set to ttl seconds
// instead of 300, for tests of caching and address rotation. Set, SetDown,
// Queries and Received work as for StartDNS.
func StartDNSTTL(records map[string][]string, ttl uint32) (*DNSServer, error) {
	s, err := StartDNS(records)
	if err != nil {
		return nil, err
	}
	// Serve the same state on a second port with rewritten TTLs, and
	// retire the first port.
	for _, srv := range s.servers {
		_ = srv.Shutdown()
	}
	s.servers = nil
	var pc net.PacketConn
	var ln net.Listener
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
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) { s.serve(ttlWriter{w, ttl}, r) })
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

// ttlWriter rewrites the TTL of every answer record.
type ttlWriter struct {
	dns.ResponseWriter
	ttl uint32
}

func (w ttlWriter) WriteMsg(m *dns.Msg) error {
	for _, rr := range m.Answer {
		rr.Header().Ttl = w.ttl
	}
	for _, rr := range m.Ns {
		rr.Header().Ttl = w.ttl
		if soa, ok := rr.(*dns.SOA); ok {
			soa.Minttl = w.ttl
		}
	}
	return w.ResponseWriter.WriteMsg(m)
}
