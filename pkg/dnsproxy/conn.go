package dnsproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/miekg/dns"

	"github.com/sluice-dev/sluice/pkg/audit"
)

// maxConnQueries is the number of queries answered on one TCP connection
// before it is closed, as miekg/dns's server does (its maxTCPQueries): a
// client that wants more opens another connection.
const maxConnQueries = 128

// ServeConn answers DNS over TCP (RFC 1035 4.2.2 two-byte length framing,
// RFC 7766: several queries per connection, answered in order) on one
// connection c for sb until the client closes it, it stays idle past the
// resolver's idle timeout, or ctx ends. It closes c.
//
// It answers as the TCP listener of Serve does (miekg/dns's server with
// the same handler): every message is judged and audited by the handler,
// answers are up to 65535 bytes (TC only beyond), a message that does not
// unpack is answered FORMERR (header and the questions that did unpack)
// and one shorter than a header is not answered; either way the
// connection stays open. Unlike Serve's listener, such a message also
// gets its audit event ("malformed query"), as over UDP.
//
// Reads are bounded: the first query must arrive in full within
// Config.TCPReadTimeout and each later one within Config.TCPIdleTimeout,
// measured from the start of its length prefix, so a client that
// trickles bytes is cut off. Writing one answer is bounded by
// TCPIdleTimeout too. After maxConnQueries (128) queries the connection
// is closed. ServeConn runs on the caller's goroutine and starts none
// (when ctx ends, a goroutine of the context package closes c).
//
// ServeConn may be called concurrently, for one sb or many, and alongside
// Serve and ServeShared for the same sb (see Handler). A sb without Policy
// or Allow gets c closed without an answer.
func (r *Resolver) ServeConn(ctx context.Context, sb *Sandbox, c net.Conn) {
	defer c.Close()
	h, err := r.handlerFor(sb)
	if err != nil {
		r.log.Warn("dns over tcp not served", "err", err)
		return
	}
	if ctx.Err() != nil {
		return
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	w := &connWriter{c: c, remote: tcpRemote(c), timeout: r.cfg.TCPIdleTimeout}
	timeout := r.cfg.TCPReadTimeout
	for range maxConnQueries {
		m, err := readConnMsg(c, timeout)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				r.log.Debug("dns over tcp connection ended", "sandbox", sb.Name, "err", err)
			}
			return
		}
		h.serveConnMsg(w, m)
		if w.closed {
			return
		}
		timeout = r.cfg.TCPIdleTimeout
	}
}

// readConnMsg reads one length-prefixed message from c, all of it before
// timeout from now.
func readConnMsg(c net.Conn, timeout time.Duration) ([]byte, error) {
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	var prefix [2]byte
	if _, err := io.ReadFull(c, prefix[:]); err != nil {
		return nil, err
	}
	m := make([]byte, binary.BigEndian.Uint16(prefix[:]))
	if _, err := io.ReadFull(c, m); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return m, nil
}

// serveConnMsg answers one message read from a connection, as miekg/dns's
// server does with MsgAcceptFunc accepting everything (serveDNS): a
// message that unpacks goes to the handler, one that does not gets
// FORMERR, or nothing when even its header is short.
func (h *handler) serveConnMsg(w *connWriter, m []byte) {
	req := new(dns.Msg)
	err := req.Unpack(m)
	if err == nil {
		h.ServeDNS(w, req)
		return
	}
	ev := audit.Event{
		V: audit.SchemaVersion, Time: h.r.now(), Kind: audit.KindDNS,
		Sandbox: h.sb.Name, CgroupID: h.sb.ID,
		Decision: audit.DecisionDeny, Reason: "malformed query",
	}
	if len(m) >= 12 {
		// Unpack set the header and the questions it could read.
		req.SetRcodeFormatError(req)
		req.Zero = false
		req.Answer, req.Ns, req.Extra = nil, nil, nil
		if err := w.WriteMsg(req); err != nil {
			h.r.log.Debug("writing dns answer", "sandbox", h.sb.Name, "err", err)
		}
		ev.Rcode = dns.RcodeToString[dns.RcodeFormatError]
	}
	h.emit(ev, w.remote.AddrPort(), true)
}

// tcpRemote returns c's peer as a *net.TCPAddr, which is how the handler
// tells TCP (answers up to 65535 bytes, Origins asked with tcp) from UDP.
// A peer it cannot read is the zero address: unattributed.
func tcpRemote(c net.Conn) *net.TCPAddr {
	switch a := c.RemoteAddr().(type) {
	case *net.TCPAddr:
		return a
	case nil:
	default:
		if ap, err := netip.ParseAddrPort(a.String()); err == nil {
			return net.TCPAddrFromAddrPort(ap)
		}
	}
	return &net.TCPAddr{}
}

// connWriter is the dns.ResponseWriter of one TCP connection: it frames
// each answer with its two-byte length.
type connWriter struct {
	c       net.Conn
	remote  *net.TCPAddr
	timeout time.Duration // to write one answer
	closed  bool
}

var _ dns.ResponseWriter = (*connWriter)(nil)

func (w *connWriter) LocalAddr() net.Addr  { return w.c.LocalAddr() }
func (w *connWriter) RemoteAddr() net.Addr { return w.remote }

func (w *connWriter) WriteMsg(m *dns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// Write sends one packed message, with its length prefix.
func (w *connWriter) Write(m []byte) (int, error) {
	if w.closed {
		return 0, errors.New("dns: write on a closed connection")
	}
	if len(m) > dns.MaxMsgSize {
		return 0, errors.New("dns: message too large")
	}
	b := make([]byte, 2+len(m))
	binary.BigEndian.PutUint16(b, uint16(len(m)))
	copy(b[2:], m)
	if err := w.c.SetWriteDeadline(time.Now().Add(w.timeout)); err != nil {
		return 0, err
	}
	n, err := w.c.Write(b)
	return max(n-2, 0), err
}

// Close closes the connection; ServeConn then stops reading it.
func (w *connWriter) Close() error {
	if w.closed {
		return errors.New("dns: connection already closed")
	}
	w.closed = true
	return w.c.Close()
}

// TsigStatus reports no TSIG: sluice's resolver does not verify TSIG.
func (w *connWriter) TsigStatus() error   { return nil }
func (w *connWriter) TsigTimersOnly(bool) {}

// Hijack does nothing: sluice's handler never takes a connection over,
// and ServeConn always closes c.
func (w *connWriter) Hijack() {}
