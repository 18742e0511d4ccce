package tlsca

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
)

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
