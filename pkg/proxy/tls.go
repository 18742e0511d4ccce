package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"
)

// TLS termination: a connection the policy intercepts (conn.go decides)
// becomes a clientConn, which replays the peeked bytes; a TLS client is
// answered with a leaf of the sandbox CA for the name the connection was
// decided on, and the negotiated protocol picks the front end: h2 goes to
// the sandbox's http.Server (h2.go), anything else, and cleartext HTTP, to
// serveH1 (h1.go).

// clientConn is the sandbox side of an intercepted connection: it replays
// the peeked bytes, counts bytes and emits the connection event on Close.
type clientConn struct {
	net.Conn
	prefix []byte
	ci     *connInfo
	once   sync.Once
	batch  *batcher // HTTP/2 connections: writes are batched (batch.go)
}

func (c *clientConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	n, err := c.Conn.Read(b)
	c.ci.up.Add(int64(n))
	return n, err
}

func (c *clientConn) Write(b []byte) (int, error) {
	if c.batch != nil {
		return c.batch.write(b)
	}
	return c.writeNow(b)
}

func (c *clientConn) writeNow(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.ci.down.Add(int64(n))
	return n, err
}

func (c *clientConn) Close() error {
	if c.batch != nil {
		c.batch.drain(c.Conn.SetWriteDeadline, closeDrain)
	}
	err := c.Conn.Close()
	c.once.Do(func() {
		s := c.ci.s
		s.untrack(c.Conn)
		c.ci.closeOwn()
		s.connEvent(c.ci)
	})
	return err
}

// newTLSConfig is the sandbox-facing TLS configuration of one server. It is
// shared by all its connections, so TLS session tickets let clients resume;
// the leaf is chosen per connection from the name the connection was
// decided on (the SNI, or the bound name when the client sent none).
func (s *server) newTLSConfig() *tls.Config {
	var curves []tls.CurveID // nil: crypto/tls's defaults (X25519MLKEM768 first)
	if s.p.cfg.SandboxClassicalKEX {
		curves = classicalOnly
	}
	return &tls.Config{
		MinVersion:       tls.VersionTLS12,
		CurvePreferences: curves,
		NextProtos:       []string{"h2", "http/1.1"},
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			cc, ok := hello.Conn.(*clientConn)
			if !ok {
				return nil, errors.New("unexpected connection type")
			}
			return s.sb.CA.Leaf(cc.ci.host)
		},
	}
}

// classicalOnly is Config.SandboxClassicalKEX's list: crypto/tls's default
// groups without the post-quantum hybrids (crypto/tls picks a hybrid the
// client supports before any other group, whatever the order).
var classicalOnly = []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521}

// intercept terminates TLS (when the client speaks it) and serves the
// connection: HTTP/1.x in this goroutine (serveH1), HTTP/2 by the sandbox's
// http.Server. It reports whether the connection was handed off (then its
// Close emits the connection event).
func (s *server) intercept(ctx context.Context, c net.Conn, peeked []byte, ci *connInfo) bool {
	if ci.host != "" {
		ci.hostPort = joinHostPort(ci.host, ci.port())
	}
	cc := &clientConn{Conn: c, prefix: peeked, ci: ci}
	var hc net.Conn = cc
	if ci.proto == protoTLS {
		tc := tls.Server(cc, s.tlsConfig)
		// A deadline, not HandshakeContext: a cancellable context costs
		// a goroutine and a timer per connection in crypto/tls. Shutdown
		// closes every tracked connection, which ends a handshake as the
		// context did.
		c.SetDeadline(time.Now().Add(s.p.cfg.HandshakeTimeout))
		err := tc.Handshake()
		c.SetDeadline(time.Time{})
		if err != nil {
			if ci.denied == "" {
				ci.reason = "TLS handshake with client: " + err.Error()
			}
			return false
		}
		hc = tc
		if tc.ConnectionState().NegotiatedProtocol != "h2" {
			s.serveH1(ctx, hc, ci)
			return true
		}
		cc.batch = newBatcher(cc.writeNow) // many streams, one connection
	} else {
		s.serveH1(ctx, hc, ci)
		return true
	}
	ln := s.h2Listener()
	if ln == nil {
		return false
	}
	select {
	case ln.ch <- hc:
		return true
	case <-ln.done:
		return false
	case <-ctx.Done():
		return false
	}
}
