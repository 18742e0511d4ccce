package enforcer

import (
	"net/netip"
	"testing"
)

func TestReasonNamesFromEnum(t *testing.T) {
	t.Parallel()
	tests := []struct {
		r    Reason
		want string
	}{
		{reasonNamed("REASON_NOT_ALLOWED"), "not_allowed"},
		{reasonNamed("REASON_METADATA"), "metadata"},
		{ReasonSocketType, "socket_type"},
		{reasonNamed("REASON_UNKNOWN_SANDBOX"), "unknown_sandbox"},
		{reasonNamed("REASON_BIND"), "bind"},
		{Reason(9999), "reason_9999"},
		{Reason(1), "not_allowed"}, // the value in bpf/sluice.h, not only a name lookup
	}
	for _, tt := range tests {
		if got := tt.r.String(); got != tt.want {
			t.Errorf("Reason(%d).String() = %q, want %q", tt.r, got, tt.want)
		}
	}
}

func TestRender(t *testing.T) {
	t.Parallel()
	dst := netip.MustParseAddrPort("1.2.3.4:22")
	tests := []struct {
		name                       string
		r                          Reason
		proto                      uint16
		dst                        netip.AddrPort
		reason, wantProto, wantDst string
	}{
		{"tcp", reasonNamed("REASON_NOT_ALLOWED"), ProtoTCP, dst, "not_allowed", "tcp", "1.2.3.4:22"},
		{"udp", reasonNamed("REASON_UDP"), ProtoUDP, dst, "udp", "udp", "1.2.3.4:22"},
		{"socket", ReasonSocketType, 132, netip.AddrPortFrom(netip.IPv6Unspecified(), 0), "socket_type", "proto-132", ""},
	}
	for _, tt := range tests {
		v := Render(tt.r, tt.proto, tt.dst)
		if v.Reason != tt.reason || v.Proto != tt.wantProto || v.Dst() != tt.wantDst {
			t.Errorf("%s: Render = %+v (dst %q), want %s %s %q", tt.name, v, v.Dst(), tt.reason, tt.wantProto, tt.wantDst)
		}
	}
}
