package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
)

// ServeShared answers queries arriving on pc (one socket shared by many
// sandboxes) until ctx ends or pc fails; it closes pc. find names the
// sandbox that sent a query from client, as the kernel recorded it; nil
// drops the query unanswered (fail closed) and counts it (Unclaimed) and
// logs it at debug. Answers leave from pc to client.
//
// client is the source address as pc reports it, not unmapped (on a
// dual-stack socket IPv4 clients come as IPv4-mapped addresses). Each query is answered as the
// UDP listener of Serve answers it, under the sandbox find names: its
// dns_qps fence, answers from the sandbox's templates (shared with Serve's
// UDP listeners), UDP truncation (the client's EDNS0 size, else 512
// bytes), one audit event per query, Origins asked with tcp false. One
// reader, on the caller's goroutine, reads one datagram at a time and
// calls find and answers template hits inline; every other query gets a
// goroutine, at most maxSlowUDP (512) per sandbox at once (past that the
// sandbox's queries are dropped with an audit event), so one sandbox
// flooding slow names does not stall the others. It returns once the
// queries it started are answered: nil when ctx ended it or pc was closed.
//
// find is called on the reader goroutine, once per datagram; it must not
// block. The sandboxes it returns follow Handler's rules (Policy and
// Allow set; a sandbox without them has its queries dropped like an
// unknown client's).
func (r *Resolver) ServeShared(ctx context.Context, pc net.PacketConn, find func(client netip.AddrPort) *Sandbox) error {
	if pc == nil {
		return errors.New("dnsproxy: nothing to serve")
	}
	if find == nil {
		pc.Close()
		return errors.New("dnsproxy: ServeShared needs find")
	}
	stop := context.AfterFunc(ctx, func() { pc.Close() })
	defer stop()
	var wg sync.WaitGroup
	err := r.readShared(pc, find, &wg)
	pc.Close()
	wg.Wait()
	if err == nil || errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("serving shared dns on %s: %w", pc.LocalAddr(), err)
}

// Unclaimed returns the number of queries ServeShared dropped because find
// named no sandbox (or one without Policy or Allow) for their client.
func (r *Resolver) Unclaimed() uint64 { return r.unclaimed.Load() }

// readShared is ServeShared's reader: readUDP with a sandbox per datagram
// (answerUDP under the handler of the sandbox find names).
func (r *Resolver) readShared(pc net.PacketConn, find func(netip.AddrPort) *Sandbox, wg *sync.WaitGroup) error {
	uc, _ := pc.(*net.UDPConn)
	buf := make([]byte, maxQuerySize)
	out := make([]byte, 0, 1500)
	key := make([]byte, 0, 300)
	for {
		var (
			peer udpPeer
			n    int
			err  error
		)
		if uc != nil {
			n, peer.ap, err = uc.ReadFromUDPAddrPort(buf)
		} else {
			n, peer.addr, err = pc.ReadFrom(buf)
		}
		if err != nil {
			if isTimeout(err) {
				continue
			}
			return err
		}
		client := peer.addrPort()
		h, err := r.sharedHandler(find, client)
		if err != nil {
			r.unclaimed.Add(1)
			r.log.Debug("dns query dropped", "client", client, "err", err)
			continue
		}
		out, key = h.answerUDP(pc, uc, peer, buf[:n], wg, h.sharedSlow, out, key)
	}
}

var errUnclaimed = errors.New("no sandbox recorded for the client")

// sharedHandler returns the handler of the sandbox find names for client.
func (r *Resolver) sharedHandler(find func(netip.AddrPort) *Sandbox, client netip.AddrPort) (*handler, error) {
	sb := find(client)
	if sb == nil {
		return nil, errUnclaimed
	}
	return r.handlerFor(sb)
}
