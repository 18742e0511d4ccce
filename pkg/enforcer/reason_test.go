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
		{Reason(sluiceReasonREASON_NOT_ALLOWED), "not_allowed"},
		{Reason(sluiceReasonREASON_METADATA), "metadata"},
		{ReasonSocketType, "socket_type"},
		{Reason(sluiceReasonREASON_UNKNOWN_SANDBOX), "unknown_sandbox"},
		{Reason(sluiceReasonREASON_BIND), "bind"},
		{Reason(9999), "reason_9999"},
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
		{"tcp", Reason(sluiceReasonREASON_NOT_ALLOWED), ProtoTCP, dst, "not_allowed", "tcp", "1.2.3.4:22"},
		{"udp", Reason(sluiceReasonREASON_UDP), ProtoUDP, dst, "udp", "udp", "1.2.3.4:22"},
		{"socket", ReasonSocketType, 132, netip.AddrPortFrom(netip.IPv6Unspecified(), 0), "socket_type", "proto-132", ""},
	}
	for _, tt := range tests {
		v := Render(tt.r, tt.proto, tt.dst)
		if v.Reason != tt.reason || v.Proto != tt.wantProto || v.Dst() != tt.wantDst {
			t.Errorf("%s: Render = %+v (dst %q), want %s %s %q", tt.name, v, v.Dst(), tt.reason, tt.wantProto, tt.wantDst)
		}
	}
}
