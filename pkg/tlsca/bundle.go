package tlsca

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"software.sslmate.com/src/go-pkcs12"
)

// TrustFiles are the distributions' PEM trust bundles, which TLS libraries
// read without any environment variable (GnuTLS wget, PHP's curl, httplib2,
// Go's crypto/x509, ...). sluice run (pkg/sandbox) and container attach
// (pkg/containers) mount the sandbox bundle over those that exist.
var TrustFiles = []string{
	"/etc/ssl/certs/ca-certificates.crt",                      // Debian, Ubuntu, Alpine, Gentoo
	"/etc/pki/tls/certs/ca-bundle.crt",                        // Fedora, RHEL
	"/etc/pki/tls/cert.pem",                                   // Fedora, RHEL (OpenSSL default)
	"/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",       // Fedora, RHEL (p11-kit export)
	"/etc/pki/ca-trust/extracted/openssl/ca-bundle.trust.crt", // Fedora, RHEL (OpenSSL trusted form)
	"/etc/pki/tls/certs/ca-bundle.trust.crt",                  // older RHEL
	"/etc/pki/tls/cacert.pem",                                 // OpenELEC
	"/etc/ssl/cert.pem",                                       // Alpine, Wolfi, LibreSSL
	"/etc/ssl/ca-bundle.pem",                                  // openSUSE
	"/etc/ca-certificates/extracted/tls-ca-bundle.pem",        // Arch
}

// SystemRootFiles are the places the host's CA bundle is looked for, in order
// (Debian/Ubuntu/Alpine, Fedora/RHEL, openSUSE, Arch's p11-kit export).
var SystemRootFiles = []string{
	"/etc/ssl/certs/ca-certificates.crt",
	"/etc/pki/tls/certs/ca-bundle.crt",
	"/etc/ssl/ca-bundle.pem",
	"/etc/ca-certificates/extracted/tls-ca-bundle.pem",
}

// SystemRootsPEM reads the first bundle of SystemRootFiles that exists. It
// returns nil and no error when there is none (a minimal host).
func SystemRootsPEM() ([]byte, error) {
	for _, f := range SystemRootFiles {
		b, err := os.ReadFile(f)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading system roots: %w", err)
		}
		return b, nil
	}
	return nil, nil
}

// Bundle is the content of the CA bundle file given to a sandbox: the system
// roots (as read by SystemRootsPEM, may be nil) followed by the sandbox CA's
// certificate, so that clients which take one bundle file (SSL_CERT_FILE,
// CURL_CA_BUNDLE, REQUESTS_CA_BUNDLE, GIT_SSL_CAINFO, PIP_CERT) trust both
// directly spliced hosts and intercepted ones. NODE_EXTRA_CA_CERTS can take
// the same file or CertPEM alone.
func Bundle(systemRootsPEM []byte, ca *CA) []byte {
	var b bytes.Buffer
	b.Grow(len(systemRootsPEM) + len(ca.certPEM) + 64)
	if len(systemRootsPEM) > 0 {
		b.Write(systemRootsPEM)
		if systemRootsPEM[len(systemRootsPEM)-1] != '\n' {
			b.WriteByte('\n')
		}
	}
	b.WriteString("# sluice sandbox CA " + ca.name + "\n")
	b.Write(ca.certPEM)
	return b.Bytes()
}

// JavaTrustStore returns a PKCS#12 trust store (certificates marked
// trusted for Java, no password, no MAC: the form `keytool -importcert`
// writes with an empty store password, read by JDK 8u301+ and 11+) of every
// certificate in the PEM bundle, for the JDKs' cacerts in the sandbox.
func JavaTrustStore(bundlePEM []byte) ([]byte, error) {
	var certs []*x509.Certificate
	rest := bundlePEM
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			continue // a bundle may hold certificates Go cannot parse; Java would skip them too
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("java trust store: no certificate in the bundle")
	}
	entries := make([]pkcs12.TrustStoreEntry, len(certs))
	for i, c := range certs {
		entries[i] = pkcs12.TrustStoreEntry{Cert: c, FriendlyName: fmt.Sprintf("sluice-%d", i)}
	}
	return pkcs12.Passwordless.EncodeTrustStoreEntries(entries, "")
}
