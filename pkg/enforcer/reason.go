package enforcer

import (
	"bytes"
	"net/netip"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// Reason is why sluice refused something: enum reason of bpf/sluice.h,
// emitted by bpf2go -type. The kernel programs count most reasons; the
// daemon counts the resource fences (see Sandbox.Refuse) in the same map.
type Reason uint32

// The reasons Go code tests for. The others need no Go name: String
// renders every reason from the enum itself.
const (
	ReasonSocketType    = Reason(sluiceReasonREASON_SOCKET_TYPE)
	ReasonRoutingOption = Reason(sluiceReasonREASON_ROUTING_OPTION)
	ReasonRoutedPacket  = Reason(sluiceReasonREASON_ROUTED_PACKET)
	ReasonInbound       = Reason(sluiceReasonREASON_INBOUND)
)

// reasonNames maps each enumerator of enum reason to its rendered name,
// read from the BTF of the embedded object: REASON_NOT_ALLOWED renders as
// "not_allowed". A new reason therefore needs no Go edit.
var reasonNames = sync.OnceValue(func() map[Reason]string {
	out := map[Reason]string{}
	spec, err := btf.LoadSpecFromReader(bytes.NewReader(_SluiceBytes))
	if err != nil {
		return out
	}
	var e *btf.Enum
	if err := spec.TypeByName("reason", &e); err != nil {
		return out
	}
	for _, v := range e.Values {
		out[Reason(v.Value)] = strings.ToLower(strings.TrimPrefix(v.Name, "REASON_"))
	}
	return out
})

// String names the reason as every command and the audit log show it.
func (r Reason) String() string {
	if n, ok := reasonNames()[r]; ok {
		return n
	}
	return "reason_" + strconv.FormatUint(uint64(r), 10)
}

// View is a refusal as every command and the audit log render it. It is
// the one place that decides how a counter or event reads.
type View struct {
	Reason string // "not_allowed", "socket_type", ...
	Proto  string // "tcp", "udp", "proto-N" (socket type), "ip"/"ipv6" (socket option)
	// Addr and Port are the refused destination; Addr is "" when the
	// refusal has none (a socket type, a socket option). For a socket
	// option Port is the option number.
	Addr string
	Port uint16
}

// Dst is Addr:Port, or "" when the refusal has no destination.
func (v View) Dst() string {
	if v.Addr == "" {
		return ""
	}
	return netip.AddrPortFrom(netip.MustParseAddr(v.Addr), v.Port).String()
}

// Render turns a counter row's or event's fields into a View.
func Render(reason Reason, proto uint16, dst netip.AddrPort) View {
	v := View{Reason: reason.String(), Proto: protoName(proto), Addr: dst.Addr().String(), Port: dst.Port()}
	if !dst.IsValid() || (dst.Addr().IsUnspecified() && dst.Port() == 0) {
		v.Addr = "" // no destination (a DNS rate fence, for example)
	}
	switch reason {
	case ReasonSocketType:
		v.Proto = "proto-" + strconv.Itoa(int(proto))
		v.Addr, v.Port = "", 0
	case ReasonRoutingOption:
		// proto is the option's level (SOL_IP, SOL_IPV6), Port its number.
		v.Proto = "ip"
		if proto == unix.SOL_IPV6 {
			v.Proto = "ipv6"
		}
		v.Addr = ""
	}
	return v
}

func protoName(p uint16) string {
	switch p {
	case ProtoUDP:
		return "udp"
	}
	return "tcp"
}

// The reasons the daemon counts itself: its resource fences.
const (
	ReasonFenceConnections         = Reason(sluiceReasonREASON_FENCE_CONNECTIONS)
	ReasonFenceUpstreamConnections = Reason(sluiceReasonREASON_FENCE_UPSTREAM_CONNECTIONS)
	ReasonFenceRequestHeadBytes    = Reason(sluiceReasonREASON_FENCE_REQUEST_HEAD_BYTES)
	ReasonFenceDNSQPS              = Reason(sluiceReasonREASON_FENCE_DNS_QPS)
)
