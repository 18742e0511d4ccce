package sandbox

import (
	"github.com/sluice-dev/sluice/pkg/tlsca"
	"os"
	"path/filepath"
)

// JavaTrustFiles are the Java trust stores (covered by a PKCS#12 store of
// the same certificates): the distributions' shared stores and every JDK's
// lib/security/cacerts.
func JavaTrustFiles() []string {
	files := []string{"/etc/ssl/certs/java/cacerts", "/etc/pki/ca-trust/extracted/java/cacerts"}
	for _, pat := range []string{"/usr/lib/jvm/*/lib/security/cacerts", "/usr/lib/jvm/*/jre/lib/security/cacerts",
		"/opt/java/*/lib/security/cacerts", "/usr/local/*/lib/security/cacerts"} {
		m, _ := filepath.Glob(pat)
		files = append(files, m...)
	}
	if h := os.Getenv("JAVA_HOME"); h != "" {
		files = append(files, filepath.Join(h, "lib/security/cacerts"))
	}
	return files
}

// TrustBinds returns the bind mounts of bundle over the PEM trust files
// and of javaStore (when not "") over the Java stores that exist on the
// host, one per real file (symlinks resolved, duplicates dropped).
func TrustBinds(bundle, javaStore string) []Bind {
	var out []Bind
	seen := map[string]bool{}
	add := func(src string, targets []string) {
		for _, t := range targets {
			real, err := filepath.EvalSymlinks(t)
			if err != nil || seen[real] {
				continue
			}
			if fi, err := os.Stat(real); err != nil || !fi.Mode().IsRegular() {
				continue
			}
			seen[real] = true
			out = append(out, Bind{Source: src, Target: real})
		}
	}
	add(bundle, tlsca.TrustFiles)
	if javaStore != "" {
		add(javaStore, JavaTrustFiles())
	}
	return out
}
