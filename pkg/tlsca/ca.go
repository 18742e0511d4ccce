package tlsca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/singleflight"
)

// File names inside a CA directory.
const (
	CertFile = "ca.crt"
	KeyFile  = "ca.key"
)

const (
	// DefaultValidity is the CA lifetime used when a caller passes 0.
	DefaultValidity = 30 * 24 * time.Hour
	// leafValidity is the longest a leaf is valid (bounded by the CA).
	leafValidity = 7 * 24 * time.Hour
	// leafRenew re-mints a cached leaf this long before it expires.
	leafRenew = 24 * time.Hour
	// backdate covers clock skew between sluice and the sandbox.
	backdate = time.Hour
	// cacheSize is the number of leaves kept per CA.
	cacheSize  = 1024
	maxNameLen = 253
)

// CA is one sandbox's certificate authority. See the package documentation.
type CA struct {
	name    string
	cert    *x509.Certificate
	certPEM []byte
	key     *ecdsa.PrivateKey
	leafKey *ecdsa.PrivateKey
	cache   *lru.Cache[string, *tls.Certificate]
	mint    singleflight.Group
	hits    atomic.Uint32
	now     func() time.Time
}

// New creates a CA named name (it appears in the certificate subject) valid
// for validity from now (DefaultValidity when validity is 0).
func New(name string, validity time.Duration) (*CA, error) {
	if validity < 0 {
		return nil, fmt.Errorf("creating CA %q: negative validity %v", name, validity)
	}
	if validity == 0 {
		validity = DefaultValidity
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("creating CA %q: generating key: %w", name, err)
	}
	serial, err := randSerial()
	if err != nil {
		return nil, fmt.Errorf("creating CA %q: %w", name, err)
	}
	now := time.Now()
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("creating CA %q: %w", name, err)
	}
	ski := sha256.Sum256(pubDER)
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			CommonName:   "sluice sandbox CA " + name,
			Organization: []string{"sluice"},
		},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SubjectKeyId:          ski[:20],
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("creating CA %q: signing: %w", name, err)
	}
	return fromParts(name, der, key)
}

func fromParts(name string, der []byte, key *ecdsa.PrivateKey) (*CA, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing CA certificate: %w", err)
	}
	if !cert.IsCA {
		return nil, errors.New("certificate is not a CA")
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(&key.PublicKey) {
		return nil, errors.New("CA key does not match the certificate")
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating leaf key: %w", err)
	}
	cache, err := lru.New[string, *tls.Certificate](cacheSize)
	if err != nil {
		return nil, fmt.Errorf("creating leaf cache: %w", err)
	}
	return &CA{
		name:    name,
		cert:    cert,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		key:     key,
		leafKey: leafKey,
		cache:   cache,
		now:     time.Now,
	}, nil
}

// Name is the name the CA was created with.
func (ca *CA) Name() string { return ca.name }

// Certificate is the parsed CA certificate. Callers must not modify it.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// CertPEM is the PEM encoding of the CA certificate (never the key).
func (ca *CA) CertPEM() []byte { return bytes.Clone(ca.certPEM) }

// NotAfter is when the CA certificate expires.
func (ca *CA) NotAfter() time.Time { return ca.cert.NotAfter }

// NeedsRotation reports whether the CA expires within margin of now.
func (ca *CA) NeedsRotation(now time.Time, margin time.Duration) bool {
	return !now.Add(margin).Before(ca.cert.NotAfter)
}

// Save writes the certificate and key into dir (created 0700 if missing).
// The key file is written 0600; both files are replaced atomically, each
// fsynced before it is renamed into place.
func (ca *CA) Save(dir string) error { return ca.save(dir, true) }

func (ca *CA) save(dir string, sync bool) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("saving CA %q: %w", ca.name, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		return fmt.Errorf("saving CA %q: encoding key: %w", ca.name, err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if err := writeAtomic(filepath.Join(dir, KeyFile), keyPEM, 0o600, sync); err != nil {
		return fmt.Errorf("saving CA %q: %w", ca.name, err)
	}
	if err := writeAtomic(filepath.Join(dir, CertFile), ca.certPEM, 0o644, sync); err != nil {
		return fmt.Errorf("saving CA %q: %w", ca.name, err)
	}
	return nil
}

// Load reads a CA saved by Save. It refuses a key file readable by group or
// others, and an expired certificate.
func Load(dir string) (*CA, error) {
	keyPath := filepath.Join(dir, KeyFile)
	fi, err := os.Stat(keyPath)
	if err != nil {
		return nil, fmt.Errorf("loading CA from %s: %w", dir, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("loading CA from %s: %s has mode %v, want 0600", dir, keyPath, fi.Mode().Perm())
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("loading CA from %s: %w", dir, err)
	}
	certPEM, err := os.ReadFile(filepath.Join(dir, CertFile))
	if err != nil {
		return nil, fmt.Errorf("loading CA from %s: %w", dir, err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil || kb.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("loading CA from %s: %s holds no PKCS#8 PEM key", dir, KeyFile)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("loading CA from %s: parsing key: %w", dir, err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("loading CA from %s: key is %T, want ECDSA", dir, k)
	}
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("loading CA from %s: %s holds no PEM certificate", dir, CertFile)
	}
	ca, err := fromParts("", cb.Bytes, key)
	if err != nil {
		return nil, fmt.Errorf("loading CA from %s: %w", dir, err)
	}
	ca.name = strings.TrimPrefix(ca.cert.Subject.CommonName, "sluice sandbox CA ")
	if !time.Now().Before(ca.cert.NotAfter) {
		return nil, fmt.Errorf("loading CA from %s: certificate expired at %s", dir, ca.cert.NotAfter.Format(time.RFC3339))
	}
	return ca, nil
}

// LoadOrCreate loads the CA in dir, or creates and saves a new one when there
// is none, it cannot be loaded, or it expires within validity/3 (rotation).
// rotated reports that a new CA was written: the sandbox's bundle must then be
// rewritten.
func LoadOrCreate(dir, name string, validity time.Duration) (ca *CA, rotated bool, err error) {
	return loadOrCreate(dir, name, validity, true)
}

// LoadOrCreateUnsynced is LoadOrCreate without waiting for the disk: a new
// CA's files are written and renamed into place but not fsynced. A power
// cut soon after may lose them; Load then fails and the next LoadOrCreate
// makes a new CA, which the sandbox does not trust yet, so interception
// fails closed. The caller makes the files durable soon after (syncfs):
// the daemon's attach did not wait for two fsyncs, its p99 on a busy disk
// (issue #21).
func LoadOrCreateUnsynced(dir, name string, validity time.Duration) (ca *CA, rotated bool, err error) {
	return loadOrCreate(dir, name, validity, false)
}

func loadOrCreate(dir, name string, validity time.Duration, sync bool) (ca *CA, rotated bool, err error) {
	if validity == 0 {
		validity = DefaultValidity
	}
	if old, err := Load(dir); err == nil && !old.NeedsRotation(time.Now(), validity/3) {
		old.name = name
		return old, false, nil
	}
	ca, err = New(name, validity)
	if err != nil {
		return nil, false, err
	}
	if err := ca.save(dir, sync); err != nil {
		return nil, false, err
	}
	return ca, true, nil
}

// Leaf returns a certificate for serverName (a DNS name, or an IPv4/IPv6
// literal which becomes an IP SAN), signed by the CA, from the cache when a
// fresh one is there. The name is normalised (lower case, no trailing dot).
func (ca *CA) Leaf(serverName string) (*tls.Certificate, error) {
	name, err := normalise(serverName)
	if err != nil {
		return nil, err
	}
	now := ca.now()
	// Hot path: a shared (read) lock only. Every 32nd hit also refreshes the
	// entry's recency, so the cache stays close to LRU without serialising
	// concurrent handshakes on an exclusive lock.
	if c, ok := ca.cache.Peek(name); ok && ca.fresh(c, now) {
		if ca.hits.Add(1)%32 == 0 {
			ca.cache.Get(name)
		}
		return c, nil
	}
	v, err, _ := ca.mint.Do(name, func() (any, error) {
		if c, ok := ca.cache.Get(name); ok && ca.fresh(c, now) {
			return c, nil
		}
		c, err := ca.issue(name, now)
		if err != nil {
			return nil, err
		}
		ca.cache.Add(name, c)
		return c, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*tls.Certificate), nil
}

// fresh reports whether a cached leaf may still be served: it is more than
// leafRenew from expiry, or it already lasts as long as the CA itself (a
// short-lived CA, as `sluice run` makes, cannot give a longer leaf, and
// re-minting would not help).
func (ca *CA) fresh(c *tls.Certificate, now time.Time) bool {
	na := c.Leaf.NotAfter
	if !now.Before(na) {
		return false
	}
	return now.Add(leafRenew).Before(na) || !na.Before(ca.cert.NotAfter)
}

func (ca *CA) issue(name string, now time.Time) (*tls.Certificate, error) {
	notAfter := now.Add(leafValidity)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	if !now.Before(notAfter) {
		return nil, fmt.Errorf("minting leaf for %q: CA %q expired at %s", name, ca.name, ca.cert.NotAfter.Format(time.RFC3339))
	}
	serial, err := randSerial()
	if err != nil {
		return nil, fmt.Errorf("minting leaf for %q: %w", name, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:   serial,
		Subject:        pkix.Name{CommonName: name},
		NotBefore:      now.Add(-backdate),
		NotAfter:       notAfter,
		KeyUsage:       x509.KeyUsageDigitalSignature,
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		AuthorityKeyId: ca.cert.SubjectKeyId,
	}
	if ip, err := netip.ParseAddr(name); err == nil {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip.AsSlice())
	} else {
		tmpl.DNSNames = []string{name}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &ca.leafKey.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("minting leaf for %q: %w", name, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("minting leaf for %q: %w", name, err)
	}
	return &tls.Certificate{
		Certificate: [][]byte{der, ca.cert.Raw},
		PrivateKey:  ca.leafKey,
		Leaf:        leaf,
	}, nil
}

// TLSConfig is a server configuration that presents a leaf for the client's
// SNI, offering HTTP/2 and HTTP/1.1 by ALPN. A ClientHello without SNI fails
// the handshake: callers that know the name otherwise use Leaf directly.
func (ca *CA) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"},
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if hello.ServerName == "" {
				return nil, errors.New("client sent no server name")
			}
			return ca.Leaf(hello.ServerName)
		},
	}
}

// normalise lower-cases name, drops a trailing dot and brackets around IPv6
// literals, and refuses anything that is not a plausible host name or IP. It
// does not allocate for a name that is already normal.
func normalise(serverName string) (string, error) {
	name := strings.TrimSuffix(serverName, ".")
	if strings.HasPrefix(name, "[") && strings.HasSuffix(name, "]") {
		name = name[1 : len(name)-1]
	}
	if strings.IndexByte(name, ':') >= 0 || looksLikeIPv4(name) {
		ip, err := netip.ParseAddr(name)
		if err != nil {
			return "", fmt.Errorf("minting leaf: invalid server name %q", serverName)
		}
		return ip.Unmap().WithZone("").String(), nil
	}
	if name == "" || len(name) > maxNameLen {
		return "", fmt.Errorf("minting leaf: invalid server name %q", serverName)
	}
	upper := false
	labelLen := 0
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '.':
			if labelLen == 0 {
				return "", fmt.Errorf("minting leaf: invalid server name %q", serverName)
			}
			labelLen = 0
			continue
		case c >= 'A' && c <= 'Z':
			upper = true
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
		case c == '*' && labelLen == 0 && i == 0 && len(name) > 1 && name[1] == '.':
		default:
			return "", fmt.Errorf("minting leaf: invalid server name %q", serverName)
		}
		labelLen++
		if labelLen > 63 {
			return "", fmt.Errorf("minting leaf: invalid server name %q", serverName)
		}
	}
	if labelLen == 0 {
		return "", fmt.Errorf("minting leaf: invalid server name %q", serverName)
	}
	if upper {
		name = strings.ToLower(name)
	}
	return name, nil
}

func looksLikeIPv4(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if (s[i] < '0' || s[i] > '9') && s[i] != '.' {
			return false
		}
	}
	return true
}

func randSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generating serial: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil
}

func writeAtomic(path string, data []byte, mode os.FileMode, sync bool) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if sync {
		if err := f.Sync(); err != nil {
			f.Close()
			return fmt.Errorf("writing %s: %w", path, err)
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
