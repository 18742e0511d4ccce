package daemon

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/sluice-dev/sluice/pkg/defaults"
	"github.com/sluice-dev/sluice/pkg/policy"
	"github.com/sluice-dev/sluice/pkg/secrets"
)

func TestIsWithin(t *testing.T) {
	cases := []struct {
		path, dir string
		want      bool
	}{
		{"/sys/fs/cgroup/a/b", "/sys/fs/cgroup/a", true},
		{"/sys/fs/cgroup/a", "/sys/fs/cgroup/a", true},
		{"/sys/fs/cgroup/ab", "/sys/fs/cgroup/a", false},
		{"/sys/fs/cgroup", "/sys/fs/cgroup/a", false},
		{"/sys/fs/cgroup/a/", "/sys/fs/cgroup", true},
	}
	for _, c := range cases {
		if got := isWithin(c.path, c.dir); got != c.want {
			t.Errorf("isWithin(%q, %q) = %v, want %v", c.path, c.dir, got, c.want)
		}
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("socket: /tmp/s.sock\ndns_upstreams: [127.0.0.1:53]\nmetrics: 127.0.0.1:9090\n"), 0o600)
	c, err := LoadConfig(good)
	if err != nil {
		t.Fatal(err)
	}
	if c.Socket != "/tmp/s.sock" || c.StateDir != defaults.StateDir || len(c.DNSUpstreams) != 1 || c.Metrics == "" {
		t.Fatalf("config %+v", c)
	}
	empty := filepath.Join(dir, "empty.yaml")
	os.WriteFile(empty, nil, 0o600)
	if c, err := LoadConfig(empty); err != nil || c.Socket != defaults.Socket {
		t.Fatalf("empty config: %+v, %v", c, err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("sockett: /x\n"), 0o600)
	if _, err := LoadConfig(bad); err == nil || !strings.Contains(err.Error(), "bad.yaml") || !strings.Contains(err.Error(), "sockett") {
		t.Fatalf("unknown field: %v", err)
	}
}

func TestOpenListenersSharePortAcrossFamilies(t *testing.T) {
	l, err := openListeners(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.proxyPort == 0 || l.dnsPort == 0 {
		t.Fatalf("ports %d %d", l.proxyPort, l.dnsPort)
	}
	if l.proxy6 != nil && !strings.HasSuffix(l.proxy6.Addr().String(), ":"+itoa(l.proxyPort)) {
		t.Fatalf("v6 proxy port %s, want %d", l.proxy6.Addr(), l.proxyPort)
	}
	// A restart prefers the old ports.
	p, d := l.proxyPort, l.dnsPort
	l.Close()
	l2, err := openListeners(p, d)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if l2.proxyPort != p || l2.dnsPort != d {
		t.Fatalf("restart got %d/%d, want %d/%d", l2.proxyPort, l2.dnsPort, p, d)
	}
}

func itoa(n uint16) string { return strconv.Itoa(int(n)) }

func TestOpaqueValuesStayOutOfTheStateDir(t *testing.T) {
	const secret = "opaque-v4lue-9f1e"
	text := []byte(`version: 1
rules:
  - name: corp
    hosts: [api.corp.test]
    headers:
      - name: X-Api-Key
        type: opaque
        value: "` + secret + `"
      - name: X-Env
        type: plaintext
        value: staging
`)
	pol, err := policy.Parse("p.yaml", text)
	if err != nil {
		t.Fatal(err)
	}
	out, values, err := splitOpaque("sb", pol, text)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), secret) || !strings.Contains(string(out), opaqueMarker) || !strings.Contains(string(out), "staging") {
		t.Fatalf("split text:\n%s", out)
	}
	store, err := secrets.OpenStore(t.TempDir(), secrets.KeySource{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	for ref, v := range values {
		if err := store.PutOpaque(ref, v); err != nil {
			t.Fatal(err)
		}
	}
	again, err := policy.Parse("p.yaml", out)
	if err != nil {
		t.Fatalf("split text does not parse: %v", err)
	}
	if err := joinOpaque("sb", again, store); err != nil {
		t.Fatal(err)
	}
	if got := again.Rules[0].Headers[0].Value; got != secret {
		t.Fatalf("restored value %q", got)
	}
	// A policy without opaque headers is kept as written.
	plain := []byte("version: 1\nrules:\n  - name: p\n    hosts: [p.test]\n")
	pp, _ := policy.Parse("p.yaml", plain)
	if out, v, err := splitOpaque("sb", pp, plain); err != nil || string(out) != string(plain) || len(v) != 0 {
		t.Fatalf("plain policy changed: %q %v %v", out, v, err)
	}
}
