package enforcer

import (
	"os"
	"path/filepath"
	"testing"
)

func TestMountOf(t *testing.T) {
	mi := filepath.Join(t.TempDir(), "mountinfo")
	os.WriteFile(mi, []byte(`23 1 0:21 / /sys rw - sysfs sysfs rw
42 23 0:39 / /sys/fs/bpf rw,relatime - bpf bpffs rw,mode=700
50 23 0:50 / /sys/fs/bpfx rw - tmpfs tmpfs rw
`), 0o600)
	cases := []struct{ path, point, fstype, dev string }{
		{"/sys/fs/bpf/sluice/v1", "/sys/fs/bpf", "bpf", "0:39"},
		{"/sys/fs/bpf", "/sys/fs/bpf", "bpf", "0:39"},
		{"/sys/fs/bpfx/v1", "/sys/fs/bpfx", "tmpfs", "0:50"},
		{"/sys/kernel", "/sys", "sysfs", "0:21"},
	}
	for _, c := range cases {
		p, f, d, err := mountOf(mi, c.path)
		if err != nil || p != c.point || f != c.fstype || d != c.dev {
			t.Errorf("mountOf(%q) = %q %q %q %v, want %q %q %q", c.path, p, f, d, err, c.point, c.fstype, c.dev)
		}
	}
}
