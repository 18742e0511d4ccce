package enforcer

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/sluice-dev/sluice/pkg/testutil"
)

// probeIn runs a probe inside the network namespace ns, inside the cgroup
// cg when cg is not "" (else outside any sandbox: the control).
func probeIn(t *testing.T, ns, cg, mode, target string) string {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, testutil.ProbeBin(), "-test.run=^$", target)
	cmd.Env = append(os.Environ(), "SLUICE_TEST_PROBE="+mode)
	var out []byte
	var err error
	if cg != "" {
		out, err = testutil.RunInCgroup(cmd, cg)
	} else {
		out, err = cmd.CombinedOutput()
	}
	if err != nil {
		t.Fatalf("probe %s %s: %v: %s", mode, target, err, out)
	}
	return strings.TrimSpace(string(out))
}

// TestSourceRoutingRefused: a sandbox in one network namespace sends, to an
// address the programs redirect (the resolver), packets whose route's first
// hop is the far end of a veth pair. Nothing may arrive there. After each
// attempt the same attack runs outside the sandbox: its packet arriving
// proves the attack is real on this kernel and that anything the sandbox
// had sent would have arrived before it.
func TestSourceRoutingRefused(t *testing.T) {
	f := setup(t, false)
	p := testutil.VethPair(t)
	capt := testutil.CaptureOn(t, p.Far, p.FarIf)
	const kernelRefuses = "error send invalid argument"
	cases := []struct {
		name, mode, hop, dst, want string
		// mayBeRefusedByKernel: the kernel accepts a routing header in
		// ancillary data only of type 2 (CONFIG_IPV6_MIP6); without it
		// the attack is impossible and the egress drop is covered by
		// TestEgressDropsRoutedPackets.
		mayBeRefusedByKernel bool
	}{
		{"ipv6 udp routing header option", "rthdr6udp", p.Far6, "[::5]:53", "error setsockopt EPERM", false},
		{"ipv6 udp routing header ancillary data", "rthdr6cmsg", p.Far6, "[::5]:53", "error send EPERM", true},
		{"ipv6 tcp fast open syn with routing header", "rthdr6tfo", p.Far6, "[::5]:53", "error setsockopt EPERM", false},
		{"ipv4 lsrr option as root", "lsrr4udp", p.Far4, "10.9.9.9:53", "error setsockopt EPERM", false},
		{"ipv4 lsrr ancillary data as root", "lsrr4cmsg", p.Far4, "10.9.9.9:53", "error send EPERM", false},
	}
	wantPacketDrops := 0
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			marker := testutil.RandomName("sluice-route-canary-")
			got := probeIn(t, p.Near, f.cg, c.mode, c.hop+"|"+c.dst+"|"+marker)
			control := testutil.RandomName("sluice-route-control-")
			out := probeIn(t, p.Near, "", c.mode, c.hop+"|"+c.dst+"|"+control)
			if c.mayBeRefusedByKernel && out == kernelRefuses && got == kernelRefuses {
				t.Logf("this kernel refuses %s by itself (%s)", c.mode, out)
				return
			}
			if got != c.want {
				t.Errorf("sandboxed probe: got %q, want %q", got, c.want)
			}
			if c.want == "error send EPERM" {
				wantPacketDrops++
			}
			if !strings.HasPrefix(out, "ok") {
				testutil.KernelLacks(t, "the unsandboxed %s attack fails (%s): the kernel refuses it by itself", c.mode, out)
			}
			deadline := time.Now().Add(10 * time.Second)
			for capt.Count([]byte(control)) == 0 {
				if time.Now().After(deadline) {
					t.Fatalf("case %d: the unsandboxed control packet never reached the far side: the capture is blind", i)
				}
				time.Sleep(20 * time.Millisecond)
			}
			if n := capt.Count([]byte(marker)); n != 0 {
				t.Fatalf("%d frames from the sandbox reached the far side", n)
			}
		})
	}
	rows, err := ReadBlocked(f.e.PinDir())
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]uint64{}
	for _, r := range rows {
		if r.Sandbox == f.sb.ID() {
			seen[Render(r.Reason, r.Proto, r.Dst).Reason] += r.Count
		}
	}
	if seen["routing_option"] < 3 || seen["routed_packet"] < uint64(wantPacketDrops) {
		t.Fatalf("refusal counters: %v, want >= 3 routing_option and >= %d routed_packet", seen, wantPacketDrops)
	}
}

// TestEgressDropsRoutedPackets runs the egress program on crafted packets
// (BPF_PROG_TEST_RUN): the belt behind the setsockopt program, for headers
// that arrive as ancillary data.
func TestEgressDropsRoutedPackets(t *testing.T) {
	f := setup(t, false)
	eth := func(typ uint16) []byte {
		return append(make([]byte, 12), byte(typ>>8), byte(typ))
	}
	v6 := func(next byte, ext []byte) []byte {
		h := make([]byte, 40)
		h[0] = 0x60
		h[4], h[5] = byte((len(ext)+8)>>8), byte(len(ext)+8)
		h[6] = next
		h[7] = 64
		h[23] = 1              // src ::1
		h[24], h[39] = 0xfd, 2 // dst fd00::2
		b := append(eth(0x86dd), h...)
		b = append(b, ext...)
		return append(b, 0, 53, 0, 53, 0, 8, 0, 0) // UDP header
	}
	type ext struct {
		id   byte // its protocol number, named by the header before it
		body func(next byte) []byte
	}
	opt := ext{60, func(next byte) []byte { return []byte{next, 0, 1, 4, 0, 0, 0, 0} }} // PadN only
	hop := ext{0, opt.body}
	frag := ext{44, func(next byte) []byte { return []byte{next, 0, 0, 0, 0, 0, 0, 1} }}
	rh := ext{43, func(next byte) []byte { return append([]byte{next, 2, 0, 1, 0, 0, 0, 0}, make([]byte, 16)...) }}
	chain := func(hdrs ...ext) (byte, []byte) {
		var b []byte
		for i, h := range hdrs {
			next := byte(17) // UDP after the last one
			if i+1 < len(hdrs) {
				next = hdrs[i+1].id
			}
			b = append(b, h.body(next)...)
		}
		if len(hdrs) == 0 {
			return 17, nil
		}
		return hdrs[0].id, b
	}
	v4 := func(ihl int) []byte {
		h := make([]byte, ihl*4)
		h[0] = 0x40 | byte(ihl)
		h[3] = byte(ihl*4 + 8)
		h[8], h[9] = 64, 17
		copy(h[12:], []byte{10, 0, 0, 1, 10, 0, 0, 2})
		for i := 20; i < len(h); i++ {
			h[i] = 1 // NOP
		}
		if ihl > 5 {
			copy(h[20:], []byte{0x83, 7, 4, 10, 0, 0, 3}) // LSRR via 10.0.0.3
		}
		return append(append(eth(0x0800), h...), 0, 53, 0, 53, 0, 8, 0, 0)
	}
	deep := make([]ext, 9)
	for i := range deep {
		deep[i] = opt
	}
	tests := []struct {
		name string
		pkt  []byte
		want uint32 // 1 pass, 0 drop
	}{
		{"plain ipv6 udp", v6(chain()), 1},
		{"ipv6 destination options only", v6(chain(opt)), 1},
		{"ipv6 routing header", v6(chain(rh)), 0},
		{"ipv6 routing header after hop-by-hop and destination options", v6(chain(hop, opt, rh)), 0},
		{"ipv6 fragment then routing header", v6(chain(frag, rh)), 0},
		{"ipv6 chain deeper than walked", v6(chain(deep...)), 0},
		{"plain ipv4", v4(5), 1},
		{"ipv4 lsrr option", v4(8), 0},
	}
	for _, tt := range tests {
		ret, err := f.e.objs.SluiceSkbEgress.Run(&ebpf.RunOptions{Data: tt.pkt})
		if err != nil {
			t.Fatalf("%s: test run: %v", tt.name, err)
		}
		if ret != tt.want {
			t.Errorf("%s: egress returned %d, want %d", tt.name, ret, tt.want)
		}
	}
}
