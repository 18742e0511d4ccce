package dnsproxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-dev/sluice/pkg/audit"
	"github.com/sluice-dev/sluice/pkg/policy"
	"github.com/sluice-dev/sluice/pkg/testutil"
)

// connServer hands every connection accepted on a loopback listener to
// ServeConn, as the proxy does with a sandbox's redirected DNS-over-TCP
// connections.
type connServer struct {
	addr string
	// ended receives once per ServeConn that returned.
	ended chan struct{}
}

func serveConns(t *testing.T, ctx context.Context, r *Resolver, sb *Sandbox) *connServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	s := &connServer{addr: ln.Addr().String(), ended: make(chan struct{}, 64)}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				r.ServeConn(ctx, sb, c)
				s.ended <- struct{}{}
			}()
		}
	}()
	t.Cleanup(func() { cancel(); ln.Close(); wg.Wait() })
	return s
}

// waitEnded waits for one ServeConn to return.
func (s *connServer) waitEnded(t *testing.T) {
	t.Helper()
	select {
	case <-s.ended:
	case <-time.After(testutil.WaitTimeout):
		t.Fatal("ServeConn did not return")
	}
}

func dialTCP(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// frame prefixes each message with its two-byte length and joins them.
func frame(msgs ...[]byte) []byte {
	var b []byte
	for _, m := range msgs {
		b = binary.BigEndian.AppendUint16(b, uint16(len(m)))
		b = append(b, m...)
	}
	return b
}

func pack(t *testing.T, m *dns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func question(id uint16, name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = id
	return m
}

// readFrame reads one length-prefixed answer from c.
func readFrame(t *testing.T, c net.Conn) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(testutil.WaitTimeout))
	var n [2]byte
	if _, err := io.ReadFull(c, n[:]); err != nil {
		t.Fatalf("reading answer length: %v", err)
	}
	b := make([]byte, binary.BigEndian.Uint16(n[:]))
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("reading answer: %v", err)
	}
	return b
}

func unpack(t *testing.T, b []byte) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		t.Fatalf("answer does not unpack: %v", err)
	}
	return m
}

// waitClosed waits for the server to close c: a read returns EOF (or a
// reset), not the client's own deadline.
func waitClosed(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(testutil.WaitTimeout))
	_, err := io.Copy(io.Discard, c)
	if isTimeout(err) {
		t.Fatal("the server kept the connection open")
	}
}

// TestServeConnPipelined: two queries written at once on one connection
// get their answers in order, attributed over TCP; the allowed name's
// address is allowlisted, the denied name never reaches the upstream.
func TestServeConnPipelined(t *testing.T) {
	up := startUpstream(t, zone("allowed.test. 300 IN A 192.0.2.10", "denied.test. 300 IN A 192.0.2.66"))
	e := newEnv(t, Config{Upstreams: []string{up.addr}}, newTestPolicy("allowed.test", "!denied.test"))
	origins := &originRec{}
	e.sb.Origins = origins
	s := serveConns(t, context.Background(), e.r, e.sb)
	c := dialTCP(t, s.addr)
	if _, err := c.Write(frame(pack(t, question(1, "allowed.test.", dns.TypeA)), pack(t, question(2, "denied.test.", dns.TypeA)))); err != nil {
		t.Fatal(err)
	}
	a1, a2 := unpack(t, readFrame(t, c)), unpack(t, readFrame(t, c))
	if a1.Id != 1 || a1.Rcode != dns.RcodeSuccess || len(addrsOf(a1)) != 1 || addrsOf(a1)[0] != "192.0.2.10" {
		t.Fatalf("first answer %v", a1)
	}
	if a2.Id != 2 || a2.Rcode != dns.RcodeNameError || len(a2.Answer) != 0 {
		t.Fatalf("second answer %v", a2)
	}
	if !e.allow.allowedAt(netip.MustParseAddr("192.0.2.10"), time.Now()) {
		t.Error("192.0.2.10 not allowlisted")
	}
	if up.saw("denied.test") {
		t.Error("the upstream saw the denied name")
	}
	evs := e.ev.Wait(t, "two events", func(evs []audit.Event) bool { return len(evs) >= 2 })
	if evs[0].QName != "allowed.test" || evs[0].Decision != audit.DecisionAllow ||
		evs[1].QName != "denied.test" || evs[1].Decision != audit.DecisionDeny {
		t.Errorf("events %+v", evs)
	}
	for _, ev := range evs {
		if ev.PID != 7 {
			t.Errorf("event not attributed: %+v", ev)
		}
	}
	want := netip.MustParseAddrPort(c.LocalAddr().String())
	for i, client := range origins.all() {
		if client != want || !origins.tcpAsked()[i] {
			t.Errorf("origin asked for %v tcp=%v, want %v over tcp", client, origins.tcpAsked()[i], want)
		}
	}
}

// TestServeConnSameAsServe: ServeConn answers byte for byte as Serve's TCP
// listener does, refusals and malformed messages included, and the
// handler's audit events are the same; ServeConn adds one event per
// message that does not unpack.
func TestServeConnSameAsServe(t *testing.T) {
	up := startUpstream(t, zone("allowed.test. 300 IN A 192.0.2.10"))
	tp := newTestPolicy("allowed.test", "!denied.test")
	viaServe := newEnv(t, Config{Upstreams: []string{up.addr}}, tp)
	viaConn := newEnv(t, Config{Upstreams: []string{up.addr}}, tp)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- viaServe.r.Serve(ctx, viaServe.sb, nil, ln) }()
	defer func() { cancel(); <-done }()
	s := serveConns(t, ctx, viaConn.r, viaConn.sb)

	twoQuestions := question(3, "allowed.test.", dns.TypeA)
	twoQuestions.Question = append(twoQuestions.Question, twoQuestions.Question[0])
	badVers := question(4, "allowed.test.", dns.TypeA)
	badVers.SetEdns0(1232, false)
	badVers.IsEdns0().SetVersion(1)
	status := question(5, "allowed.test.", dns.TypeA)
	status.Opcode = dns.OpcodeStatus
	response := question(6, "allowed.test.", dns.TypeA)
	response.Response = true
	// A header announcing one question, then half a name.
	cut := append(pack(t, question(7, "x.test.", dns.TypeA))[:12], 5, 'a', 'b')
	cases := []struct {
		name   string
		msg    []byte
		answer bool
	}{
		{"denied", pack(t, question(1, "denied.test.", dns.TypeA)), true},
		{"unmatched", pack(t, question(2, "other.test.", dns.TypeAAAA)), true},
		{"two questions", pack(t, twoQuestions), true},
		{"edns version 1", pack(t, badVers), true},
		{"opcode status", pack(t, status), true},
		{"response", pack(t, response), false},
		{"does not unpack", cut, true},
		{"shorter than a header", []byte{0, 8, 1}, false},
		{"empty", nil, false},
	}
	probe := pack(t, question(99, "denied.test.", dns.TypeA))
	cServe, cConn := dialTCP(t, ln.Addr().String()), dialTCP(t, s.addr)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got [2][]byte
			for i, c := range []net.Conn{cServe, cConn} {
				if tc.answer {
					if _, err := c.Write(frame(tc.msg)); err != nil {
						t.Fatal(err)
					}
					got[i] = readFrame(t, c)
					continue
				}
				// No answer: the next one is the probe's, on a
				// connection still open.
				if _, err := c.Write(frame(tc.msg, probe)); err != nil {
					t.Fatal(err)
				}
				if m := unpack(t, readFrame(t, c)); m.Id != 99 {
					t.Fatalf("answer %v, want none before the probe's", m)
				}
			}
			if !bytes.Equal(got[0], got[1]) {
				t.Fatalf("Serve answered %x, ServeConn %x", got[0], got[1])
			}
			if tc.name == "does not unpack" {
				if m := unpack(t, got[1]); m.Id != 7 || m.Rcode != dns.RcodeFormatError {
					t.Fatalf("answer %v, want FORMERR", m)
				}
			}
		})
	}
	// Every case but the unparsable ones has a handler event; the probe
	// went through twice.
	handled := 0
	for _, tc := range cases {
		if tc.name != "does not unpack" && tc.name != "shorter than a header" && tc.name != "empty" {
			handled++
		}
	}
	handled += 3
	evServe := viaServe.ev.Wait(t, "Serve's events", func(evs []audit.Event) bool { return len(evs) >= handled })
	evConn := viaConn.ev.Wait(t, "ServeConn's events", func(evs []audit.Event) bool { return len(evs) >= handled+3 })
	var fromHandler []audit.Event
	malformed := 0
	for _, ev := range evConn {
		if ev.Reason == "malformed query" {
			malformed++
			continue
		}
		fromHandler = append(fromHandler, ev)
	}
	if malformed != 3 || len(fromHandler) != len(evServe) {
		t.Fatalf("ServeConn: %d malformed and %d other events, want 3 and %d", malformed, len(fromHandler), len(evServe))
	}
	for i := range evServe {
		a, b := evServe[i], fromHandler[i]
		if a.QName != b.QName || a.QType != b.QType || a.Decision != b.Decision || a.Reason != b.Reason || a.Rcode != b.Rcode {
			t.Errorf("event %d: Serve %+v, ServeConn %+v", i, a, b)
		}
	}
}

// TestServeConnCutsOff: a client that stalls mid-message, or stays idle
// after an answer, is disconnected at the configured timeouts; so is every
// client when ctx ends.
func TestServeConnCutsOff(t *testing.T) {
	up := startUpstream(t, zone("allowed.test. 300 IN A 192.0.2.10"))
	const timeout = 100 * time.Millisecond
	e := newEnv(t, Config{Upstreams: []string{up.addr}, TCPReadTimeout: timeout, TCPIdleTimeout: timeout}, newTestPolicy("allowed.test"))
	s := serveConns(t, context.Background(), e.r, e.sb)
	query := pack(t, question(1, "allowed.test.", dns.TypeA))
	tests := []struct {
		name string
		send []byte
		// answered: the query in send is answered first.
		answered bool
	}{
		{"half a length prefix", []byte{0}, false},
		{"half a message", frame(query)[:8], false},
		{"idle after an answer", frame(query), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Before the dial: the server sets its deadline after its
			// accept, which may come before the dial returns here.
			start := time.Now()
			c := dialTCP(t, s.addr)
			if _, err := c.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			if tt.answered {
				if m := unpack(t, readFrame(t, c)); m.Id != 1 {
					t.Fatalf("answer %v", m)
				}
			}
			waitClosed(t, c)
			s.waitEnded(t)
			if d := time.Since(start); d < timeout {
				t.Errorf("closed after %v, before the timeout", d)
			}
		})
	}
	t.Run("ctx ends", func(t *testing.T) {
		e := newEnv(t, Config{Upstreams: []string{up.addr}, TCPReadTimeout: time.Hour, TCPIdleTimeout: time.Hour}, newTestPolicy("allowed.test"))
		ctx, cancel := context.WithCancel(context.Background())
		s := serveConns(t, ctx, e.r, e.sb)
		c := dialTCP(t, s.addr)
		if _, err := c.Write(frame(query)); err != nil {
			t.Fatal(err)
		}
		readFrame(t, c)
		cancel()
		waitClosed(t, c)
		s.waitEnded(t)
	})
}

// TestServeConnQueryLimit: a connection is closed after maxConnQueries
// answers, as miekg/dns's server does (the timeouts are an hour: only the
// limit can close it).
func TestServeConnQueryLimit(t *testing.T) {
	up := startUpstream(t, nil)
	e := newEnv(t, Config{Upstreams: []string{up.addr}, TCPReadTimeout: time.Hour, TCPIdleTimeout: time.Hour}, newTestPolicy("allowed.test"))
	s := serveConns(t, context.Background(), e.r, e.sb)
	c := dialTCP(t, s.addr)
	var msgs [][]byte
	for i := range maxConnQueries {
		msgs = append(msgs, pack(t, question(uint16(i), "denied.test.", dns.TypeA)))
	}
	if _, err := c.Write(frame(msgs...)); err != nil {
		t.Fatal(err)
	}
	for i := range maxConnQueries {
		if m := unpack(t, readFrame(t, c)); m.Id != uint16(i) {
			t.Fatalf("answer %d has id %d", i, m.Id)
		}
	}
	waitClosed(t, c)
	s.waitEnded(t)
}

// TestHandlerFirstUseConcurrent: the first uses of a sandbox, concurrent,
// build one handler and fill its defaults once (run with -race).
func TestHandlerFirstUseConcurrent(t *testing.T) {
	r, err := New(Config{Upstreams: []string{"127.0.0.1:1"}}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	pol := newTestPolicy("allowed.test").build(t)
	sb := &Sandbox{Name: "fresh", Policy: func() *policy.Policy { return pol }, Allow: &allowRec{}}
	const n = 8
	got := make([]*handler, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			h, err := r.handlerFor(sb)
			if err != nil {
				t.Error(err)
				return
			}
			_ = h.sb.Bindings.gen.Load() // read the defaults as the handler does
			got[i] = h
		})
	}
	wg.Wait()
	for _, h := range got {
		if h != got[0] || h == nil {
			t.Fatal("more than one handler built for one sandbox")
		}
	}
	if sb.Bindings == nil || sb.Audit == nil {
		t.Fatal("defaults not filled in")
	}
	if h, _ := r.Handler(sb); h != dns.Handler(got[0]) {
		t.Fatal("Handler built another handler")
	}
	// Another Resolver gets a handler of its own.
	r2, err := New(Config{Upstreams: []string{"127.0.0.1:1"}}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	if h, _ := r2.handlerFor(sb); h == got[0] || h.r != r2 {
		t.Fatal("handler shared across resolvers")
	}
	if _, err := r.Handler(&Sandbox{Name: "no policy"}); err == nil {
		t.Fatal("a sandbox without Policy and Allow got a handler")
	}
}
