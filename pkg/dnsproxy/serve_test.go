package dnsproxy

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/testutil"
)

// TestServeListeners: Serve works with either listener alone, on IPv4 and
// IPv6 loopback, refuses to serve nothing, and returns nil once its
// listeners are closed from outside.
func TestServeListeners(t *testing.T) {
	up := startUpstream(t, zone("allowed.test. 300 IN A 192.0.2.10"))
	tests := []struct {
		name    string
		host    string
		udp     bool
		tcp     bool
		wantErr string
	}{
		{"udp only", "127.0.0.1", true, false, ""},
		{"tcp only", "127.0.0.1", false, true, ""},
		{"both on ::1", "::1", true, true, ""},
		{"nothing", "127.0.0.1", false, false, "nothing to serve"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, Config{Upstreams: []string{up.addr}}, newTestPolicy("allowed.test"))
			var pc net.PacketConn
			var ln net.Listener
			var err error
			if tt.udp {
				if pc, err = net.ListenPacket("udp", net.JoinHostPort(tt.host, "0")); err != nil {
					testutil.KernelLacks(t, "no %s to listen on: %v", tt.host, err)
				}
			}
			if tt.tcp {
				if ln, err = net.Listen("tcp", net.JoinHostPort(tt.host, "0")); err != nil {
					testutil.KernelLacks(t, "no %s to listen on: %v", tt.host, err)
				}
			}
			done := make(chan error, 1)
			go func() { done <- e.r.Serve(context.Background(), e.sb, pc, ln) }()
			if tt.wantErr != "" {
				if err := <-done; err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			for _, l := range []struct {
				net  string
				addr net.Addr
			}{{"udp", addrOf(pc)}, {"tcp", addrOfL(ln)}} {
				if l.addr == nil {
					continue
				}
				q := new(dns.Msg)
				q.SetQuestion("allowed.test.", dns.TypeA)
				c := &dns.Client{Net: l.net, Timeout: 2 * time.Second}
				r, _, err := c.Exchange(q, l.addr.String())
				if err != nil || len(r.Answer) != 1 {
					t.Fatalf("%s: %v %v", l.net, r, err)
				}
			}
			// Closing the listeners from outside ends Serve without error.
			if pc != nil {
				pc.Close()
			}
			if ln != nil {
				ln.Close()
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("Serve: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Serve kept running after its listeners closed")
			}
		})
	}
}

func addrOf(pc net.PacketConn) net.Addr {
	if pc == nil {
		return nil
	}
	return pc.LocalAddr()
}

func addrOfL(ln net.Listener) net.Addr {
	if ln == nil {
		return nil
	}
	return ln.Addr()
}

// TestServeOddMessagesAudited: messages miekg/dns would reject before any
// handler (two questions, NOTIFY) are answered by the resolver and audited,
// over UDP and TCP alike.
func TestServeOddMessagesAudited(t *testing.T) {
	up := startUpstream(t, zone("allowed.test. 300 IN A 192.0.2.10"))
	e := newEnv(t, Config{Upstreams: []string{up.addr}}, newTestPolicy("allowed.test"))
	pc, ln := listenPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.r.Serve(ctx, e.sb, pc, ln) }()
	defer func() { cancel(); <-done }()
	for _, netw := range []string{"udp", "tcp"} {
		q := new(dns.Msg)
		q.SetQuestion("allowed.test.", dns.TypeA)
		q.Question = append(q.Question, q.Question[0])
		c := &dns.Client{Net: netw, Timeout: 2 * time.Second}
		r, _, err := c.Exchange(q, pc.LocalAddr().String())
		if err != nil || r.Rcode != dns.RcodeFormatError {
			t.Fatalf("%s: %v %v, want FORMERR", netw, r, err)
		}
	}
	evs := e.ev.Wait(t, "two events", func(evs []audit.Event) bool { return len(evs) >= 2 })
	for _, ev := range evs {
		if ev.Reason != reasonQuestions {
			t.Errorf("event %+v", ev)
		}
	}
	if n := len(e.ev.all()); n != 2 {
		t.Fatalf("%d events, want 2", n)
	}
}
