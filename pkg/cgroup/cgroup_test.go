package cgroup_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-dev/sluice/pkg/cgroup"
	"github.com/sluice-dev/sluice/pkg/testutil"
)

func TestCreateMoveRemove(t *testing.T) {
	testutil.RequirePrivileged(t)
	mnt, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	p, err := cgroup.Create(mnt, testutil.RandomName("sluice-cgtest-"))
	if err != nil {
		t.Fatal(err)
	}
	defer cgroup.Remove(p, 0)
	child, err := cgroup.Create(p, "child")
	if err != nil {
		t.Fatal(err)
	}
	id, err := cgroup.ID(child)
	if err != nil || id == 0 {
		t.Fatalf("id %d, %v", id, err)
	}
	if _, err := cgroup.ID("/tmp"); err == nil {
		t.Fatal("ID accepted a directory outside cgroupfs")
	}
	self, err := cgroup.Self()
	if err != nil || !strings.HasPrefix(self, mnt) {
		t.Fatalf("Self %q, %v", self, err)
	}
	if err := cgroup.Remove(p, 5e9); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(p, "child")); !os.IsNotExist(err) {
		t.Fatalf("child left: %v", err)
	}
}
