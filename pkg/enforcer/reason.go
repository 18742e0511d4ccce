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

// Reason is why sluice refused something: enum reason of bpf/sluice.h. The
// kernel programs count most reasons; the daemon counts the resource fences
// (see Sandbox.Refuse) in the same map.
//
// Go reads the enum from the BTF of the embedded object (not from bpf2go
// -type), so a new reason is bpf/sluice.h, its use in bpf/sluice.c and the
// regenerated object: no Go file changes (issue #16).
type Reason uint32

// The reasons Go code tests for. The others need no Go name: String
// renders every reason from the enum itself.
var (
	ReasonSocketType    = reasonNamed("REASON_SOCKET_TYPE")
	ReasonRoutingOption = reasonNamed("REASON_ROUTING_OPTION")
	ReasonRoutedPacket  = reasonNamed("REASON_ROUTED_PACKET")
	ReasonInbound       = reasonNamed("REASON_INBOUND")
)

// reasonEnum is enum reason as the embedded object's BTF has it,
// enumerator name to value.
var reasonEnum = sync.OnceValue(func() map[string]Reason {
	spec, err := btf.LoadSpecFromReader(bytes.NewReader(_SluiceBytes))
	if err != nil {
		panic("enforcer: the embedded eBPF object has no BTF: " + err.Error())
	}
	var e *btf.Enum
	if err := spec.TypeByName("reason", &e); err != nil {
		panic("enforcer: the embedded eBPF object has no enum reason: " + err.Error())
	}
	out := make(map[string]Reason, len(e.Values))
	for _, v := range e.Values {
		out[v.Name] = Reason(v.Value)
	}
	return out
})

// reasonNamed is the value of an enumerator of enum reason. A name the
// object lacks is a build mistake (a renamed enumerator): it panics at
// package initialisation, so every test of the package catches it.
func reasonNamed(name string) Reason {
	r, ok := reasonEnum()[name]
	if !ok {
		panic("enforcer: enum reason in bpf/sluice.h has no " + name)
	}
	return r
}

// reasonNames maps each reason to its rendered name: REASON_NOT_ALLOWED
// renders as "not_allowed".
var reasonNames = sync.OnceValue(func() map[Reason]string {
	out := map[Reason]string{}
	for name, r := range reasonEnum() {
		out[r] = strings.ToLower(strings.TrimPrefix(name, "REASON_"))
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
var (
	ReasonFenceConnections         = reasonNamed("REASON_FENCE_CONNECTIONS")
	ReasonFenceUpstreamConnections = reasonNamed("REASON_FENCE_UPSTREAM_CONNECTIONS")
	ReasonFenceRequestHeadBytes    = reasonNamed("REASON_FENCE_REQUEST_HEAD_BYTES")
	ReasonFenceDNSQPS              = reasonNamed("REASON_FENCE_DNS_QPS")
)
