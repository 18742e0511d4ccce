package dnsproxy

import (
	"net"

	"github.com/miekg/dns"
)

// qpsReason is the extended error text (RFC 8914) of a query refused at the
// sandbox's dns_qps fence: the client reads why it got REFUSED.
const qpsReason = "sluice: the sandbox's dns_qps limit is reached; retry later"

// qpsRefusal returns the answer to req when the sandbox's dns_qps fence is
// closed: REFUSED, the question echoed, and when the client speaks EDNS0 an
// Extended DNS Error (code Other) carrying qpsReason.
func qpsRefusal(req *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetRcode(req, dns.RcodeRefused)
	m.RecursionAvailable = true
	if opt := req.IsEdns0(); opt != nil {
		o := new(dns.OPT)
		o.Hdr.Name = "."
		o.Hdr.Rrtype = dns.TypeOPT
		o.SetUDPSize(dns.MinMsgSize)
		o.Option = append(o.Option, &dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeOther, ExtraText: qpsReason})
		m.Extra = append(m.Extra, o)
	}
	return m
}

// refuseUDP answers the datagram pkt REFUSED (qpsRefusal) instead of
// dropping it, so that the client stops waiting at once and knows why. A
// datagram that does not parse gets a header-only REFUSED; a response or
// one shorter than a header gets nothing. The caller has counted and
// reported the refusal.
func (h *handler) refuseUDP(pc net.PacketConn, uc *net.UDPConn, peer udpPeer, pkt []byte) {
	if len(pkt) < 12 || pkt[2]&0x80 != 0 {
		return
	}
	var m *dns.Msg
	req := new(dns.Msg)
	if err := req.Unpack(pkt); err == nil {
		m = qpsRefusal(req)
	} else {
		m = new(dns.Msg)
		m.Id = uint16(pkt[0])<<8 | uint16(pkt[1])
		m.Response = true
		m.Opcode = int(pkt[2]>>3) & 0xf
		m.Rcode = dns.RcodeRefused
	}
	if wire, err := m.Pack(); err == nil {
		h.writeUDP(pc, uc, peer, wire)
	}
}
