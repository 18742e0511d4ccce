package enforcer

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// mountOf returns the mount point, filesystem type and device (major:minor)
// of the mount that holds path, from a mountinfo file.
func mountOf(mountinfo, path string) (point, fstype, dev string, err error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return "", "", "", err
	}
	defer f.Close()
	path = filepath.Clean(path)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 1 {
			continue
		}
		mp := pf[4]
		if (path == mp || strings.HasPrefix(path, strings.TrimSuffix(mp, "/")+"/")) && len(mp) >= len(point) {
			// Later lines win at equal length: they are mounted on top.
			point, fstype, dev = mp, qf[0], pf[2]
		}
	}
	return point, fstype, dev, sc.Err()
}

// checkPinsOutlive makes sure pins under pinDir will outlive this process:
// the directory must be on bpffs, and that bpffs instance must be mounted
// in the host's (pid 1's) mount namespace too. Pins on a bpffs private to
// this process's mount namespace vanish with it, and the sandboxes would
// then fail open.
func checkPinsOutlive(pinDir string) error {
	point, fstype, dev, err := mountOf("/proc/self/mountinfo", pinDir)
	if err != nil {
		return fmt.Errorf("reading mounts: %w", err)
	}
	if fstype != "bpf" {
		return fmt.Errorf("pin directory %s is not on bpffs (it is on %s at %s): pinned links would not outlive sluice, and sandboxes would fail open; mount bpffs (mount -t bpf bpffs /sys/fs/bpf) or choose a --pin-dir below it", pinDir, fstype, point)
	}
	f, err := os.Open("/proc/1/mountinfo")
	if err != nil {
		return nil // cannot tell; pid 1's view is hidden from us
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) >= 3 && len(qf) >= 1 && qf[0] == "bpf" && pf[2] == dev {
			return nil
		}
	}
	if err := sc.Err(); err != nil {
		return nil
	}
	return errors.New("the bpffs holding " + pinDir + " is private to sluice's mount namespace (the host's pid 1 does not see it): its pins, and with them enforcement, would vanish when sluice exits; run sluice in the host mount namespace with bpffs mounted at /sys/fs/bpf (no PrivateMounts=, no private bpffs)")
}
