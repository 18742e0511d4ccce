package cgroup

import (
	"strings"
	"testing"
)

func TestParseMountinfo(t *testing.T) {
	cases := []struct {
		name, in, want, wantErr string
	}{
		{"hybrid", `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`, "/sys/fs/cgroup/unified", ""},
		{"unified", `26 1 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
`, "/sys/fs/cgroup", ""},
		{"escaped space", `26 1 0:23 / /mnt/my\040cgroups rw - cgroup2 none rw
`, "/mnt/my cgroups", ""},
		{"v1 only", `32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
`, "", "no cgroup2 filesystem is mounted"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := parseMountinfo(strings.NewReader(c.in))
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err %v, want %q", err, c.wantErr)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("got %q, %v; want %q", got, err, c.want)
			}
		})
	}
}

func TestParseProcCgroup(t *testing.T) {
	got, err := parseProcCgroup([]byte("12:pids:/x\n0::/sandboxes/a\n"))
	if err != nil || got != "/sandboxes/a" {
		t.Fatalf("got %q, %v", got, err)
	}
	if _, err := parseProcCgroup([]byte("12:pids:/x\n")); err == nil {
		t.Fatal("v1-only /proc/PID/cgroup accepted")
	}
}
