package tlsca

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func newCA(t testing.TB) *CA {
	t.Helper()
	ca, err := New("test", time.Hour*24*30)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func TestLeafVerifies(t *testing.T) {
	ca := newCA(t)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca.CertPEM()) {
		t.Fatal("CertPEM does not parse")
	}
	tests := []struct {
		name    string
		server  string
		verify  string // name to verify the leaf for
		wantErr string
	}{
		{name: "dns", server: "api.example.com", verify: "api.example.com"},
		{name: "upper case and trailing dot", server: "API.Example.com.", verify: "api.example.com"},
		{name: "ipv4", server: "10.1.2.3", verify: "10.1.2.3"},
		{name: "ipv6 bracketed", server: "[2001:db8::1]", verify: "2001:db8::1"},
		{name: "other name does not verify", server: "a.example.com", verify: "b.example.com", wantErr: "certificate is valid for a.example.com"},
		{name: "empty", server: "", wantErr: "invalid server name"},
		{name: "nul byte", server: "a\x00.example.com", wantErr: "invalid server name"},
		{name: "empty label", server: "a..example.com", wantErr: "invalid server name"},
		{name: "too long", server: strings.Repeat("a.", 130) + "com", wantErr: "invalid server name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ca.Leaf(tt.server)
			if err == nil {
				_, err = c.Leaf.Verify(x509.VerifyOptions{DNSName: tt.verify, Roots: pool})
			}
			if tt.wantErr == "" && err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("error %v, want it to contain %q", err, tt.wantErr)
			}
			if err == nil && c.Leaf.NotAfter.After(ca.NotAfter()) {
				t.Fatalf("leaf outlives CA: %v > %v", c.Leaf.NotAfter, ca.NotAfter())
			}
		})
	}
}

func TestLeafCached(t *testing.T) {
	ca := newCA(t)
	var wg sync.WaitGroup
	got := make([]*tls.Certificate, 16)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := ca.Leaf("x.example.com")
			if err != nil {
				t.Error(err)
			}
			got[i] = c
		}()
	}
	wg.Wait()
	for _, c := range got {
		if c != got[0] {
			t.Fatal("concurrent Leaf calls minted more than one certificate")
		}
	}
	c2, _ := ca.Leaf("X.EXAMPLE.COM.")
	if c2 != got[0] {
		t.Fatal("normalised name missed the cache")
	}
	other, _ := ca.Leaf("y.example.com")
	if other == got[0] {
		t.Fatal("different names share a certificate")
	}
	// A leaf close to expiry is re-minted.
	ca.now = func() time.Time { return time.Now().Add(7 * 24 * time.Hour) }
	c3, err := ca.Leaf("x.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if c3 == got[0] {
		t.Fatal("leaf near expiry was not re-minted")
	}
}

func TestTLSConfigHandshake(t *testing.T) {
	ca := newCA(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", ca.TLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				c.(*tls.Conn).Handshake()
				c.Close()
			}()
		}
	}()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM())
	for _, tt := range []struct {
		name, sni, wantErr string
	}{
		{name: "sni", sni: "svc.example.com"},
		{name: "no sni", sni: "", wantErr: "tls: internal error"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := &tls.Config{RootCAs: pool, ServerName: tt.sni, NextProtos: []string{"h2"}}
			if tt.sni == "" {
				cfg.InsecureSkipVerify = true
			}
			c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
			if err == nil {
				defer c.Close()
				if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
					t.Errorf("ALPN %q, want h2", p)
				}
			}
			if tt.wantErr == "" && err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("error %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestSaveLoad(t *testing.T) {
	ca := newCA(t)
	dir := filepath.Join(t.TempDir(), "ca")
	if err := ca.Save(dir); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	got, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if string(got.CertPEM()) != string(ca.CertPEM()) || got.Name() != "test" {
		t.Fatal("loaded CA differs")
	}
	if !got.key.Equal(ca.key) {
		t.Fatal("loaded key differs")
	}
	// Leaves of the loaded CA verify against the saved certificate.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM())
	l, err := got.Leaf("after.load")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Leaf.Verify(x509.VerifyOptions{DNSName: "after.load", Roots: pool}); err != nil {
		t.Fatal(err)
	}

	other := newCA(t)
	otherDir := t.TempDir()
	other.Save(otherDir)

	tests := []struct {
		name    string
		prepare func(dir string)
		wantErr string
	}{
		{name: "missing", prepare: func(dir string) { os.Remove(filepath.Join(dir, KeyFile)) }, wantErr: "no such file"},
		{name: "key readable by others", prepare: func(dir string) { os.Chmod(filepath.Join(dir, KeyFile), 0o644) }, wantErr: "want 0600"},
		{name: "garbage key", prepare: func(dir string) { os.WriteFile(filepath.Join(dir, KeyFile), []byte("x"), 0o600) }, wantErr: "no PKCS#8"},
		{name: "garbage cert", prepare: func(dir string) { os.WriteFile(filepath.Join(dir, CertFile), []byte("x"), 0o600) }, wantErr: "no PEM certificate"},
		{name: "mismatched key", prepare: func(dir string) {
			b, _ := os.ReadFile(filepath.Join(otherDir, KeyFile))
			os.WriteFile(filepath.Join(dir, KeyFile), b, 0o600)
		}, wantErr: "does not match"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := t.TempDir()
			ca.Save(d)
			tt.prepare(d)
			_, err := Load(d)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestExpiryAndRotation(t *testing.T) {
	dir := t.TempDir()
	ca, rotated, err := LoadOrCreate(dir, "sb1", 30*24*time.Hour)
	if err != nil || !rotated {
		t.Fatalf("first LoadOrCreate: rotated=%v err=%v", rotated, err)
	}
	again, rotated, err := LoadOrCreate(dir, "sb1", 30*24*time.Hour)
	if err != nil || rotated {
		t.Fatalf("second LoadOrCreate: rotated=%v err=%v", rotated, err)
	}
	if string(again.CertPEM()) != string(ca.CertPEM()) {
		t.Fatal("second LoadOrCreate made a new CA")
	}

	// A CA inside its renewal window is rotated.
	short, err := New("sb2", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !short.NeedsRotation(time.Now(), time.Hour) {
		t.Fatal("NeedsRotation false for a CA expiring within the margin")
	}
	d2 := t.TempDir()
	short.Save(d2)
	fresh, rotated, err := LoadOrCreate(d2, "sb2", 30*24*time.Hour)
	if err != nil || !rotated || string(fresh.CertPEM()) == string(short.CertPEM()) {
		t.Fatalf("near-expiry CA not rotated: rotated=%v err=%v", rotated, err)
	}

	// An expired CA neither loads nor mints.
	expired, err := New("sb3", time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	d3 := t.TempDir()
	expired.Save(d3)
	time.Sleep(5 * time.Millisecond)
	if _, err := Load(d3); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("Load of expired CA: %v", err)
	}
	if _, err := expired.Leaf("a.example"); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("Leaf of expired CA: %v", err)
	}
	if _, err := New("x", -time.Second); err == nil {
		t.Fatal("negative validity accepted")
	}
}

func TestBundle(t *testing.T) {
	ca := newCA(t)
	other := newCA(t)
	sys := other.CertPEM()
	sys = sys[:len(sys)-1] // no trailing newline
	b := Bundle(sys, ca)
	var n int
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		n++
	}
	if n != 2 {
		t.Fatalf("bundle holds %d certificates, want 2", n)
	}
	if pool := x509.NewCertPool(); !pool.AppendCertsFromPEM(b) {
		t.Fatal("bundle does not parse")
	}
	if got := Bundle(nil, ca); !strings.HasSuffix(string(got), string(ca.CertPEM())) {
		t.Fatal("bundle without system roots lacks the CA")
	}
	if _, err := SystemRootsPEM(); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkLeafCacheHit(b *testing.B) {
	ca := newCA(b)
	if _, err := ca.Leaf("api.example.com"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := ca.Leaf("api.example.com"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkLeafMint(b *testing.B) {
	ca := newCA(b)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := ca.issue("api.example.com", time.Now()); err != nil {
			b.Fatal(err)
		}
	}
}

// A CA shorter-lived than the leaf renewal margin (sluice run's 24 h CA)
// must still serve cached leaves, not mint one per handshake.
func TestLeafCachedUnderShortLivedCA(t *testing.T) {
	ca, err := New("short", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	a, err := ca.Leaf("api.test")
	if err != nil {
		t.Fatal(err)
	}
	b, err := ca.Leaf("api.test")
	if err != nil {
		t.Fatal(err)
	}
	if a != b {
		t.Fatal("the leaf was minted again under a 24 h CA")
	}
}

// TestLoadOrCreateUnsynced: the unsynced variant writes the same files
// (key 0600) and loads the CA it wrote, as LoadOrCreate does.
func TestLoadOrCreateUnsynced(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca, rotated, err := LoadOrCreateUnsynced(dir, "sb1", 30*24*time.Hour)
	if err != nil || !rotated {
		t.Fatalf("first: rotated=%v err=%v", rotated, err)
	}
	again, rotated, err := LoadOrCreate(dir, "sb1", 30*24*time.Hour)
	if err != nil || rotated || string(again.CertPEM()) != string(ca.CertPEM()) {
		t.Fatalf("the unsynced CA did not load: rotated=%v err=%v", rotated, err)
	}
	fi, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
}
