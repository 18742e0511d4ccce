package statedir

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestLayout: the file locations of an installed sluice (a contract with
// existing state directories and the packaged files).
func TestLayout(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ name, got, want string }{
		{"Path", Default.Path(), "/var/lib/sluice"},
		{"Record", Default.Record("a"), "/var/lib/sluice/sandboxes/a.json"},
		{"Policy", Default.Policy("a"), "/var/lib/sluice/sandboxes/a.policy.yaml"},
		{"CA", Default.CA("a"), "/var/lib/sluice/sandboxes/a.ca"},
		{"TrustRecord", Default.TrustRecord("a"), "/var/lib/sluice/sandboxes/a.trust.json"},
		{"TrustBundle", Default.TrustBundle("a"), "/var/lib/sluice/sandboxes/a.trust.pem"},
		{"Fences", Default.Fences(), "/var/lib/sluice/fences.json"},
		{"RunDir.Name", DefaultRunDir.Name(42), "/run/sluice/run/42"},
		{"RunDir.Info", DefaultRunDir.Info(42), "/run/sluice/run/42.json"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.name, c.got, c.want)
		}
	}
}

func TestListings(t *testing.T) {
	t.Parallel()
	d := Dir(t.TempDir())
	r := RunDir(t.TempDir())
	if err := os.MkdirAll(d.Sandboxes(), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{d.Record("a"), d.Policy("a"), d.TrustRecord("a"), d.Record("b"), r.Name(7), r.Info(7), filepath.Join(r.Path(), "junk")} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(d.CA("a"), 0o700); err != nil {
		t.Fatal(err)
	}
	if got, want := d.Records(), []string{d.Record("a"), d.Record("b")}; !slices.Equal(got, want) {
		t.Errorf("Records = %q, want %q (trust records are not sandbox records)", got, want)
	}
	if got := r.Names(); !slices.Equal(got, []uint64{7}) {
		t.Errorf("RunDir.Names = %v, want [7]", got)
	}
	if got := r.Infos(); !slices.Equal(got, []string{r.Info(7)}) {
		t.Errorf("RunDir.Infos = %q", got)
	}
	d.RemoveSandbox("a")
	for _, f := range []string{d.Record("a"), d.Policy("a"), d.CA("a")} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("RemoveSandbox left %s", f)
		}
	}
}
