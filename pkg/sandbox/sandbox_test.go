package sandbox

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/tlsca"
	"golang.org/x/sys/unix"
	"software.sslmate.com/src/go-pkcs12"
)

// childEnv makes the test binary, re-executed, run one child mode instead
// of the tests.
const childEnv = "SANDBOX_TEST_CHILD"

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "":
		os.Exit(m.Run())
	case "filter":
		os.Exit(childFilter())
	case "scrub":
		os.Exit(childScrub())
	}
	os.Exit(2)
}

// childFilter installs the filter on a locked thread and tries the
// refused and allowed calls from that thread.
func childFilter() int {
	runtime.LockOSThread()
	if err := installFilter(); err != nil {
		fmt.Println("install:", err)
		return 1
	}
	try := func(name string, domain, typ int) {
		fd, err := unix.Socket(domain, typ, 0)
		if err == nil {
			unix.Close(fd)
			fmt.Println(name, "ok")
			return
		}
		fmt.Println(name, err.(unix.Errno).Error())
	}
	try("packet", unix.AF_PACKET, unix.SOCK_DGRAM)
	try("vsock", unix.AF_VSOCK, unix.SOCK_STREAM)
	try("alg", unix.AF_ALG, unix.SOCK_SEQPACKET)
	try("unix", unix.AF_UNIX, unix.SOCK_STREAM)
	try("inet", unix.AF_INET, unix.SOCK_STREAM)
	try("inet6", unix.AF_INET6, unix.SOCK_DGRAM)
	try("netlink", unix.AF_NETLINK, unix.SOCK_RAW)
	if _, _, e := unix.RawSyscall(unix.SYS_SOCKETPAIR, unix.AF_PACKET, unix.SOCK_DGRAM, 0); e != 0 {
		fmt.Println("socketpair-packet", e.Error())
	}
	_, _, e := unix.RawSyscall(unix.SYS_UNSHARE, unix.CLONE_NEWUSER, 0, 0)
	fmt.Println("unshare-user", errnoText(e))
	_, _, e = unix.RawSyscall(unix.SYS_IO_URING_SETUP, 8, 0, 0)
	fmt.Println("io_uring", errnoText(e))
	_, _, e = unix.RawSyscall(unix.SYS_BPF, 0, 0, 0)
	fmt.Println("bpf", errnoText(e))
	_, _, e = unix.RawSyscall(unix.SYS_PERF_EVENT_OPEN, 0, 0, 0)
	fmt.Println("perf", errnoText(e))
	_, _, e = unix.RawSyscall(unix.SYS_CLONE3, 0, 0, 0)
	fmt.Println("clone3", errnoText(e))
	_, _, e = unix.RawSyscall(unix.SYS_IOCTL, 0, unix.TIOCSTI, 0)
	fmt.Println("tiocsti", errnoText(e))
	_, _, e = unix.RawSyscall(unix.SYS_GETPID, 0, 0, 0)
	fmt.Println("getpid", errnoText(e))
	return 0
}

func errnoText(e unix.Errno) string {
	if e == 0 {
		return "ok"
	}
	return e.Error()
}

func TestFilter(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=filter")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	afno := unix.EAFNOSUPPORT.Error()
	for _, want := range []string{
		"packet " + afno, "vsock " + afno, "alg " + afno, "socketpair-packet " + afno,
		"unix ok", "inet ok", "inet6 ok", "netlink ok",
		"unshare-user " + unix.EPERM.Error(), "io_uring " + unix.EPERM.Error(), "bpf " + unix.EPERM.Error(), "perf " + unix.EPERM.Error(),
		"clone3 " + unix.ENOSYS.Error(), "tiocsti " + unix.EPERM.Error(), "getpid ok",
	} {
		if !strings.Contains(string(out), want+"\n") {
			t.Errorf("want %q", want)
		}
	}
	if t.Failed() {
		t.Logf("child output:\n%s", out)
	}
}

func TestFilterRefusesForeignArch(t *testing.T) {
	t.Parallel()
	prog, err := Filter()
	if err != nil {
		t.Fatal(err)
	}
	// The first instructions: load the arch, compare with ours, refuse.
	a, _ := archFilter()
	if prog[0].K != offArch || prog[1].K != a.audit || prog[2].K != retErrno(unix.EPERM) {
		t.Fatalf("the filter does not start with the arch check: %+v", prog[:3])
	}
	for i, ins := range prog {
		if ins.Code&0x07 == unix.BPF_JMP && (int(ins.Jt)+i+1 >= len(prog) || int(ins.Jf)+i+1 >= len(prog)) {
			t.Fatalf("instruction %d jumps past the end", i)
		}
	}
	if last := prog[len(prog)-1]; last.Code != unix.BPF_RET|unix.BPF_K || last.K != unix.SECCOMP_RET_ALLOW {
		t.Fatalf("the filter does not end with allow: %+v", last)
	}
}

func childScrub() int {
	if err := ScrubOwnEnviron([]string{"NAMED_SECRET"}, []string{"v4lue-0f-the-secret"}); err != nil {
		fmt.Println("scrub:", err)
		return 1
	}
	b, _ := os.ReadFile("/proc/self/environ")
	fmt.Printf("environ-has-value=%v environ-has-name=%v keep=%v getenv=%q\n",
		bytes.Contains(b, []byte("v4lue-0f-the-secret")), bytes.Contains(b, []byte("NAMED_SECRET")),
		bytes.Contains(b, []byte("KEEP_ME=yes")), os.Getenv("INNOCENT")+os.Getenv("NAMED_SECRET")+os.Getenv("KEEP_ME"))
	return 0
}

func TestScrubOwnEnviron(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=scrub", "INNOCENT=v4lue-0f-the-secret", "NAMED_SECRET=other", "KEEP_ME=yes")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if want := `environ-has-value=false environ-has-name=false keep=true getenv="yes"`; !strings.Contains(string(out), want) {
		t.Fatalf("got %s, want %s", out, want)
	}
}

func TestBuildEnv(t *testing.T) {
	t.Parallel()
	base := []string{"PATH=/usr/bin", "CORP_KEY=abc", "LOOKS_FINE=s3cret", "SSL_CERT_FILE=/elsewhere.pem",
		"HOME=/root", "USER=root", "SUDO_UID=1000", "NODE_EXTRA_CA_CERTS=/other.pem", "KEEP=1"}
	id := &Identity{UID: 65534, GID: 65534, Name: "nobody"}
	env := BuildEnv(base, EnvOptions{
		SecretNames: []string{"CORP_KEY"}, SecretValues: []string{"s3cret", ""},
		Set:  CAEnv("/b.pem", "/ca.pem", "/etc/ssl/certs"),
		User: id, Home: "/tmp/h",
	})
	got := map[string]int{}
	vals := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		got[k]++
		vals[k] = v
	}
	for k, n := range got {
		if n != 1 {
			t.Errorf("%s appears %d times", k, n)
		}
	}
	for _, k := range []string{"CORP_KEY", "LOOKS_FINE", "SUDO_UID"} {
		if got[k] != 0 {
			t.Errorf("%s is still there", k)
		}
	}
	for k, want := range map[string]string{"PATH": "/usr/bin", "KEEP": "1", "SSL_CERT_FILE": "/b.pem", "NODE_EXTRA_CA_CERTS": "/ca.pem",
		"HOME": "/tmp/h", "USER": "nobody", "LOGNAME": "nobody", "SSL_CERT_DIR": "/etc/ssl/certs",
		"GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": "/b.pem", "NIX_SSL_CERT_FILE": "/b.pem", "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE": "/b.pem",
		"HTTPLIB2_CA_CERTS": "/b.pem"} {
		if vals[k] != want {
			t.Errorf("%s=%q, want %q", k, vals[k], want)
		}
	}
}

func TestResolveUser(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

	id, err := ResolveUser("", dir, env(map[string]string{"SUDO_UID": "65534", "SUDO_GID": "65534"}))
	if err != nil || id.UID != 65534 || id.GID != 65534 || id.Allocated {
		t.Fatalf("behind sudo: %+v, %v", id, err)
	}
	id, err = ResolveUser("root", dir, env(nil))
	if err != nil || id.UID != 0 || id.Home == "" {
		t.Fatalf("root: %+v, %v", id, err)
	}
	id, err = ResolveUser("1234:5678", dir, env(nil))
	if err != nil || id.UID != 1234 || id.GID != 5678 {
		t.Fatalf("1234:5678: %+v, %v", id, err)
	}
	if _, err := ResolveUser("no-such-user-here", dir, env(nil)); err == nil {
		t.Fatal("an unknown user was accepted")
	}

	// Without --user and sudo (or sudo from root): allocated, never twice
	// while held, reusable once released.
	var mu sync.Mutex
	seen := map[uint32]bool{}
	var ids []*Identity
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id, err := ResolveUser("", dir, env(map[string]string{"SUDO_UID": "0"}))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Error(err)
				return
			}
			if !id.Allocated || id.UID < UIDBase || id.UID >= UIDBase+UIDCount || id.GID != id.UID {
				t.Errorf("allocated %+v", id)
			}
			if seen[id.UID] {
				t.Errorf("uid %d handed out twice", id.UID)
			}
			seen[id.UID] = true
			ids = append(ids, id)
		}()
	}
	wg.Wait()
	for _, id := range ids {
		id.Release()
		if _, err := os.Stat(filepath.Join(dir, "uids", fmt.Sprint(id.UID)+".lock")); err == nil {
			t.Errorf("the lock file of uid %d outlived its release", id.UID)
		}
	}
	ids[0].Release() // twice is fine
	again, err := ResolveUser("", dir, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer again.Release()
}

func TestHomeAndCanEnter(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown")
	}
	parent, err := os.MkdirTemp("", "sandbox-home-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(parent) })
	os.Chmod(parent, 0o755)
	id := &Identity{UID: 65534, GID: 65534}
	if id.WritableHome("/nonexistent") || id.WritableHome("/root") || id.WritableHome("") {
		t.Fatal("a missing or foreign home counted as writable")
	}
	if id.CanEnter(t.TempDir()) {
		t.Fatal("CanEnter a directory below a 0700 one")
	}
	h, err := id.MakeHome(parent)
	if err != nil {
		t.Fatal(err)
	}
	if !id.WritableHome(h) || !id.CanEnter(h) {
		t.Fatalf("the made home %s is not usable", h)
	}
	if id.CanEnter("/root") && mustStatMode(t, "/root")&0o001 == 0 {
		t.Fatal("CanEnter /root for nobody")
	}
}

func mustStatMode(t *testing.T, p string) os.FileMode {
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode()
}

func TestJavaTrustStoreAndBinds(t *testing.T) {
	t.Parallel()
	ca, err := tlsca.New("java test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sys, _ := tlsca.SystemRootsPEM()
	store, err := tlsca.JavaTrustStore(tlsca.Bundle(sys, ca))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pkcs12.DecodeTrustStore(store, "")
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, c := range certs {
		if c.Subject.CommonName == ca.Certificate().Subject.CommonName {
			found = true
		}
	}
	if !found || len(certs) < 1 {
		t.Fatalf("the store holds %d certificates, sandbox CA found: %v", len(certs), found)
	}

	dir := t.TempDir()
	b := filepath.Join(dir, "bundle.pem")
	os.WriteFile(b, []byte("x"), 0o644)
	for _, bind := range TrustBinds(b, filepath.Join(dir, "java")) {
		if bind.Source != b && !strings.HasSuffix(bind.Source, "java") {
			t.Errorf("bind %+v", bind)
		}
		if _, err := os.Stat(bind.Target); err != nil {
			t.Errorf("bind target %s: %v", bind.Target, err)
		}
		if real, _ := filepath.EvalSymlinks(bind.Target); real != bind.Target {
			t.Errorf("bind target %s is not resolved", bind.Target)
		}
	}
	if _, err := os.Stat("/etc/ssl/certs/ca-certificates.crt"); err == nil {
		binds := TrustBinds(b, "")
		if len(binds) == 0 || binds[0].Target != "/etc/ssl/certs/ca-certificates.crt" {
			t.Errorf("Debian's bundle is not covered: %+v", binds)
		}
	}
}
