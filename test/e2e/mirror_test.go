package e2e

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// Issue 15, acceptance 5: as --user nobody (home /nonexistent) the command
// gets a writable HOME that is not /root, and npm and pip install from a
// loopback mirror (which sees the injected credential).

const mirrorPolicy = `version: 1
rules:
  - name: mirrors
    hosts: [registry.test, pypi.test]
    headers:
      - {name: Authorization, type: secret, value: "Bearer {DEMO_TOKEN}"}
`

// npmTarball is demo-pkg 1.0.0 as npm packs it.
func npmTarball(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for name, body := range map[string]string{
		"package/package.json": `{"name": "demo-pkg", "version": "1.0.0", "main": "index.js"}`,
		"package/index.js":     `module.exports = "npm mirror works";`,
	} {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	tw.Close()
	gz.Close()
	return buf.Bytes()
}

// wheel is demo_pkg 1.0.0 as a pure-Python wheel.
func wheel(t *testing.T) []byte {
	t.Helper()
	files := []struct{ name, body string }{
		{"demo_pkg/__init__.py", "X = 'pip mirror works'\n"},
		{"demo_pkg-1.0.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0.0\n"},
		{"demo_pkg-1.0.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: sluice-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"},
	}
	var record strings.Builder
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, f := range files {
		w, err := zw.Create(f.name)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(f.body))
		sum := sha256.Sum256([]byte(f.body))
		fmt.Fprintf(&record, "%s,sha256=%s,%d\n", f.name, base64.RawURLEncoding.EncodeToString(sum[:]), len(f.body))
	}
	record.WriteString("demo_pkg-1.0.0.dist-info/RECORD,,\n")
	w, _ := zw.Create("demo_pkg-1.0.0.dist-info/RECORD")
	w.Write([]byte(record.String()))
	zw.Close()
	return buf.Bytes()
}

func TestRunUserNobodyHomeAndInstalls(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	requireTools(t, "npm", debianPython)
	for _, n := range []string{"registry.test", "pypi.test"} {
		w.dns.Set(n, "127.0.0.1")
	}
	tgz, whl := npmTarball(t), wheel(t)
	var port int
	mux := http.NewServeMux()
	mux.HandleFunc("/demo-pkg", func(rw http.ResponseWriter, r *http.Request) {
		s1 := sha1.Sum(tgz)
		s512 := sha512.Sum512(tgz)
		rw.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(rw, `{"name":"demo-pkg","dist-tags":{"latest":"1.0.0"},"versions":{"1.0.0":{"name":"demo-pkg","version":"1.0.0",`+
			`"main":"index.js","dist":{"tarball":"https://registry.test:%d/demo-pkg/-/demo-pkg-1.0.0.tgz","shasum":"%s","integrity":"sha512-%s"}}}}`,
			port, hex.EncodeToString(s1[:]), base64.StdEncoding.EncodeToString(s512[:]))
	})
	mux.HandleFunc("/demo-pkg/-/demo-pkg-1.0.0.tgz", func(rw http.ResponseWriter, r *http.Request) { rw.Write(tgz) })
	mux.HandleFunc("/simple/demo-pkg/", func(rw http.ResponseWriter, r *http.Request) {
		sum := sha256.Sum256(whl)
		fmt.Fprintf(rw, `<!DOCTYPE html><html><body><a href="https://pypi.test:%d/files/demo_pkg-1.0.0-py3-none-any.whl#sha256=%s">demo_pkg-1.0.0-py3-none-any.whl</a></body></html>`,
			port, hex.EncodeToString(sum[:]))
	})
	mux.HandleFunc("/files/demo_pkg-1.0.0-py3-none-any.whl", func(rw http.ResponseWriter, r *http.Request) { rw.Write(whl) })
	api := useAPI(t, w, []string{"registry.test", "pypi.test"}, mux)
	port = api.Port
	pol := writePolicy(t, w.dir, "mirror.yaml", mirrorPolicy)
	script := fmt.Sprintf(`set -e
echo "HOME=$HOME uid=$(id -u)"
touch "$HOME/.written" && echo HOME-WRITABLE
cd "$HOME" && mkdir proj && cd proj
npm install --registry https://registry.test:%[1]d/ --no-audit --no-fund --no-update-notifier demo-pkg 2>&1
node -e 'console.log(require("demo-pkg"))'
%[2]s -m pip install --user --break-system-packages --disable-pip-version-check --index-url https://pypi.test:%[1]d/simple/ demo-pkg 2>&1
cd / && %[2]s -c 'import demo_pkg; print(demo_pkg.X)'
ls -d "$HOME/.npm" "$HOME/.local/lib"`, port, debianPython)
	out, code := w.run(t, pol, "--user", "nobody", "--", "sh", "-c", script)
	if code != 0 {
		t.Fatalf("as nobody: exit %d\n%s", code, out)
	}
	for _, want := range []string{"HOME-WRITABLE", "uid=65534", "npm mirror works", "pip mirror works"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(out, "HOME=/root ") || strings.Contains(out, "cache has been disabled") || strings.Contains(out, "EACCES") {
		t.Errorf("HOME is /root or not writable")
	}
	var npmReqs, pipReqs int
	for _, r := range api.Requests() {
		if r.Header.Get("Authorization") != "Bearer "+demoSecret {
			t.Errorf("%s reached the mirror without the injected header", r.Path)
		}
		switch {
		case strings.HasPrefix(r.Path, "/demo-pkg"):
			npmReqs++
		case strings.HasPrefix(r.Path, "/simple/") || strings.HasPrefix(r.Path, "/files/"):
			pipReqs++
		}
	}
	if npmReqs < 2 || pipReqs < 2 {
		t.Errorf("the mirror saw %d npm and %d pip requests, want the metadata and the package of each", npmReqs, pipReqs)
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}
}
