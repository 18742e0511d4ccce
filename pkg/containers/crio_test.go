package containers

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/sluice-dev/sluice/pkg/cgroup"
	"github.com/sluice-dev/sluice/pkg/testutil"
	"golang.org/x/sys/unix"
)

// fakeCRIORunRoot lays out RUNROOT/overlay-containers/ID/userdata/pidfile
// like CRI-O's and Podman's conmon.
func fakeCRIORunRoot(t *testing.T, ctrs map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for id, pid := range ctrs {
		dir := filepath.Join(root, "overlay-containers", id, "userdata")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if pid == "" {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, "pidfile"), []byte(pid), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestCRIOResolve(t *testing.T) {
	pid := liveProcess(t)
	zombie := zombieProcess(t)
	wantCg, err := cgroup.OfPID(pid)
	if err != nil {
		testutil.KernelLacks(t, "no cgroup v2: %v", err)
	}
	const id = "5e2a9c81d04b4f6e8a7b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f"
	root := fakeCRIORunRoot(t, map[string]string{
		id:         strconv.Itoa(pid) + "\n",
		"abcd0001": strconv.Itoa(pid),
		"abcd0002": strconv.Itoa(pid),
		"dead0000": strconv.Itoa(zombie),
		"starting": "",
		"garbage0": "x",
	})
	tests := []struct {
		name, id, wantID, wantErr string
	}{
		{name: "full id", id: id, wantID: id},
		{name: "unique prefix", id: "5e2a9c81", wantID: id},
		{name: "ambiguous prefix", id: "abcd", wantErr: "ambiguous"},
		{name: "unknown", id: "ffff0000", wantErr: `no container "ffff0000"`},
		{name: "no pidfile yet", id: "starting", wantErr: "no init process yet"},
		{name: "garbage pidfile", id: "garbage0", wantErr: "does not hold a pid"},
		{name: "exited", id: "dead0000", wantErr: "has exited"},
		{name: "path traversal", id: "../x", wantErr: "invalid container id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := (&CRIO{RunRoot: root}).Resolve(context.Background(), tt.id)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := Target{Runtime: RuntimeCRIO, ID: tt.wantID, PID: pid, Cgroup: wantCg, Netns: "/proc/" + strconv.Itoa(pid) + "/ns/net"}
			if got != want {
				t.Fatalf("got %+v\nwant %+v", got, want)
			}
		})
	}
	if _, err := (&CRIO{RunRoot: filepath.Join(root, "nope")}).Resolve(context.Background(), "abcd"); err == nil || !strings.Contains(err.Error(), "no container state") {
		t.Fatalf("missing run root: %v", err)
	}
	for _, name := range []string{"cri-o", "crio", "podman"} {
		r, err := New(name, Options{CRIORunRoot: root})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := r.(*CRIO); !ok {
			t.Fatalf("New(%q) = %T", name, r)
		}
	}
}

// TestResolveInStaysBelowRoot: symbolic links in an image resolve inside
// its root file system, never to the host's files.
func TestResolveInStaysBelowRoot(t *testing.T) {
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "etc/ssl/certs"), 0o755))
	must(os.WriteFile(filepath.Join(root, "etc/ssl/certs/ca-certificates.crt"), []byte("x"), 0o644))
	must(os.Symlink("/etc/ssl/certs/ca-certificates.crt", filepath.Join(root, "etc/ssl/cert.pem")))
	must(os.Symlink("../../../../../../etc/passwd", filepath.Join(root, "etc/ssl/escape.pem")))
	must(os.Symlink("loop.pem", filepath.Join(root, "etc/ssl/loop.pem")))
	tests := []struct{ in, want, wantErr string }{
		{in: "/etc/ssl/certs/ca-certificates.crt", want: filepath.Join(root, "etc/ssl/certs/ca-certificates.crt")},
		{in: "/etc/ssl/cert.pem", want: filepath.Join(root, "etc/ssl/certs/ca-certificates.crt")},
		{in: "/etc/ssl/escape.pem", wantErr: "no such file"},
		{in: "/etc/ssl/loop.pem", wantErr: "too many levels"},
		{in: "/etc/pki/tls/certs/ca-bundle.crt", wantErr: "no such file"},
	}
	for _, tt := range tests {
		got, err := resolveIn(root, tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: %q, %v; want error %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%s: %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestPeerGroupOf(t *testing.T) {
	mi := filepath.Join(t.TempDir(), "mountinfo")
	data := `22 1 0:21 / / rw,relatime shared:1 - overlay overlay rw
23 22 0:22 / /etc/ssl rw,relatime master:7 - tmpfs tmpfs rw
24 22 0:23 / /etc/ssl\040x rw,relatime shared:9 - tmpfs tmpfs rw
`
	if err := os.WriteFile(mi, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ path, want string }{
		{"/etc/hosts", "shared:1"},
		{"/etc/ssl/certs/ca-certificates.crt", ""},
		{"/etc/ssl x/cert.pem", "shared:9"},
		{"/etc/sslx", "shared:1"},
	} {
		if got := peerGroupOf(mi, c.path); got != c.want {
			t.Errorf("%s: %q, want %q", c.path, got, c.want)
		}
	}
	groups, err := sharedPeerGroups(mi)
	if err != nil || !groups["shared:1"] || !groups["shared:9"] || len(groups) != 2 {
		t.Fatalf("sharedPeerGroups: %v %v", groups, err)
	}
}

// TestInMountNSNeverOnMainThread: the namespace switch never happens on the
// main thread, whose namespaces /proc/self shows for the whole process.
func TestInMountNSNeverOnMainThread(t *testing.T) {
	testutil.RequirePrivileged(t)
	before, err := MountNS(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 200; i++ {
		err := inMountNS(os.Getpid(), func() error {
			if unix.Gettid() == unix.Getpid() {
				return errors.New("ran on the main thread")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if after, _ := MountNS(os.Getpid()); after != before {
		t.Fatalf("the process's mount namespace changed: %d -> %d", before, after)
	}
}
