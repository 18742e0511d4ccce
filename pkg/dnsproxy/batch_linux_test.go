package dnsproxy

import (
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// TestUDPBatchesWithoutSegmentation: where the kernel refuses UDP_SEGMENT
// (here because the socket sends without checksums, SO_NO_CHECK), every
// answer still arrives, sent alone.
func TestUDPBatchesWithoutSegmentation(t *testing.T) {
	up := startUpstream(t, zone("allowed.test. 300 IN A 192.0.2.10"))
	testUDPBatches(t, up, "127.0.0.1", func(t *testing.T, uc *net.UDPConn) {
		rc, err := uc.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_NO_CHECK, 1)
		}); err != nil || serr != nil {
			t.Fatalf("SO_NO_CHECK: %v %v", err, serr)
		}
	})
}
