package audit

import (
	"net"
	"net/url"
	"regexp"
	"strings"
	"unicode"
)

// Package ecosystems named by ClassifyPackage and the Ecosystem field.
const (
	EcosystemNPM    = "npm"
	EcosystemPyPI   = "pypi"
	EcosystemGo     = "go"
	EcosystemCrates = "crates"
	EcosystemMaven  = "maven"
)

// ClassifyPackage recognises a package download from its host and request
// path and names its ecosystem (Ecosystem* constants), package and
// version. It matches on the shape of the path, so mirrors and proxies
// (Nexus, Artifactory, devpi, Athens, a remapped registry) are recognised
// as well as the public registries; the host only helps to strip a
// mirror's path prefix. The query string is ignored.
//
// Shapes recognised:
//
//	npm     .../<name>/-/<name>-<ver>.tgz, .../@scope/<name>/-/<name>-<ver>.tgz
//	pypi    .../<name>-<ver>(-<tags>).whl|.tar.gz|.zip under /packages/ (or a PyPI host),
//	        .../simple/<name>/ (version ""), /pypi/<name>[/<ver>]/json
//	go      .../<module>/@v/<ver>.zip|.mod|.info (with !-escaped upper case)
//	crates  .../crates/<name>/<ver>/download, .../crates/<name>/<name>-<ver>.crate
//	maven   .../<group path>/<artifact>/<ver>/<artifact>-<ver>[-<classifier>].jar|.pom|.aar|.war|.module
//
// Package names are reported as the registry spells them: npm with its
// scope ("@types/node"), PyPI normalised (PEP 503: "zope-interface"), Go
// the module path, Maven "group:artifact".
func ClassifyPackage(host, path string) (ecosystem, pkg, version string, ok bool) {
	host = normHost(host)
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	if i := strings.Index(path, "://"); i >= 0 && !strings.ContainsAny(path[:i], "/?") {
		// Absolute form: take the host from the target.
		rest := path[i+3:]
		j := strings.IndexByte(rest, '/')
		if j < 0 {
			return "", "", "", false
		}
		host, path = normHost(rest[:j]), rest[j:]
	}
	trailingSlash := strings.HasSuffix(path, "/")
	var segs []string
	for _, s := range strings.Split(path, "/") {
		if s == "" {
			continue
		}
		if u, err := url.PathUnescape(s); err == nil {
			s = u
		}
		segs = append(segs, s)
	}
	if len(segs) == 0 {
		return "", "", "", false
	}
	for _, f := range []func(string, []string, bool) (string, string, string, bool){goModule, npmTarball, crate, mavenArtifact, pypiFile} {
		if e, p, v, ok := f(host, segs, trailingSlash); ok {
			return e, p, v, true
		}
	}
	return "", "", "", false
}

func normHost(h string) string {
	if hh, _, err := net.SplitHostPort(h); err == nil {
		h = hh
	}
	return strings.TrimSuffix(strings.ToLower(h), ".")
}

// goModule: <module>/@v/<ver>.zip|.mod|.info.
func goModule(host string, segs []string, _ bool) (string, string, string, bool) {
	n := len(segs)
	if n < 3 || segs[n-2] != "@v" {
		return "", "", "", false
	}
	file := segs[n-1]
	var ver string
	for _, ext := range []string{".zip", ".mod", ".info"} {
		if strings.HasSuffix(file, ext) {
			ver = strings.TrimSuffix(file, ext)
			break
		}
	}
	if ver == "" {
		return "", "", "", false
	}
	mod := segs[:n-2]
	if host != "proxy.golang.org" && !strings.Contains(mod[0], ".") {
		// A mirror's prefix (/api/go/go-remote/...): the module path
		// starts at its first element with a dot.
		for i, s := range mod {
			if strings.Contains(s, ".") {
				mod = mod[i:]
				break
			}
		}
	}
	m, ok1 := unescapeGo(strings.Join(mod, "/"))
	v, ok2 := unescapeGo(ver)
	if !ok1 || !ok2 || m == "" || v == "" {
		return "", "", "", false
	}
	return EcosystemGo, m, v, true
}

// unescapeGo undoes the module proxy's case encoding: "!x" is "X". An
// unescaped upper-case letter (a lax mirror) is kept as is; a '!' not
// followed by a lower-case letter is invalid.
func unescapeGo(s string) (string, bool) {
	if !strings.Contains(s, "!") {
		return s, true
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '!' {
			b.WriteByte(c)
			continue
		}
		i++
		if i == len(s) || s[i] < 'a' || s[i] > 'z' {
			return "", false
		}
		b.WriteByte(s[i] - 'a' + 'A')
	}
	return b.String(), true
}

// npmTarball: [@scope/]<name>/-/<name>-<ver>.tgz.
func npmTarball(_ string, segs []string, _ bool) (string, string, string, bool) {
	n := len(segs)
	if n < 3 || segs[n-2] != "-" || !strings.HasSuffix(segs[n-1], ".tgz") {
		return "", "", "", false
	}
	name := segs[n-3]
	base := name
	switch {
	case strings.HasPrefix(name, "@") && strings.Contains(name, "/"):
		// "@scope%2fname" unescaped to one segment.
		base = name[strings.IndexByte(name, '/')+1:]
	case n >= 4 && strings.HasPrefix(segs[n-4], "@"):
		name = segs[n-4] + "/" + name
	}
	file := strings.TrimSuffix(segs[n-1], ".tgz")
	ver, ok := strings.CutPrefix(file, base+"-")
	if !ok || ver == "" || !startsWithDigit(ver) {
		return "", "", "", false
	}
	return EcosystemNPM, name, ver, true
}

// crate: crates/<name>/<ver>/download or crates/<name>/<name>-<ver>.crate.
func crate(_ string, segs []string, _ bool) (string, string, string, bool) {
	n := len(segs)
	if n >= 4 && segs[n-1] == "download" && segs[n-4] == "crates" && startsWithDigit(segs[n-2]) {
		return EcosystemCrates, segs[n-3], segs[n-2], true
	}
	if n >= 2 && strings.HasSuffix(segs[n-1], ".crate") {
		name := segs[n-2]
		ver, ok := strings.CutPrefix(strings.TrimSuffix(segs[n-1], ".crate"), name+"-")
		if ok && startsWithDigit(ver) {
			return EcosystemCrates, name, ver, true
		}
	}
	return "", "", "", false
}

var mavenExts = []string{".jar", ".pom", ".aar", ".war", ".module"}

// mavenArtifact: <group path>/<artifact>/<ver>/<artifact>-<ver>[-<classifier>].<ext>.
func mavenArtifact(_ string, segs []string, _ bool) (string, string, string, bool) {
	n := len(segs)
	if n < 4 {
		return "", "", "", false
	}
	file := segs[n-1]
	ext := ""
	for _, e := range mavenExts {
		if strings.HasSuffix(file, e) {
			ext = e
			break
		}
	}
	if ext == "" {
		return "", "", "", false
	}
	artifact, ver := segs[n-3], segs[n-2]
	stem := strings.TrimSuffix(file, ext)
	prefix := artifact + "-" + ver
	if base, ok := strings.CutSuffix(ver, "-SNAPSHOT"); ok {
		prefix = artifact + "-" + base + "-" // timestamped snapshot files
	}
	if stem != prefix && !strings.HasPrefix(stem, prefix+"-") && !(strings.HasSuffix(prefix, "-") && strings.HasPrefix(stem, prefix)) {
		return "", "", "", false
	}
	start := 0
	for i := range n - 3 {
		switch segs[i] {
		case "maven2", "m2":
			start = i + 1
		case "repository", "repositories":
			start = i + 2 // Nexus: /repository/<repo>/...
		case "artifactory":
			if i == 0 {
				start = 2 // Artifactory: /artifactory/<repo>/...
			}
		}
	}
	if start >= n-3 {
		return "", "", "", false
	}
	group := strings.Join(segs[start:n-3], ".")
	return EcosystemMaven, group + ":" + artifact, ver, true
}

var pypiHosts = map[string]bool{"files.pythonhosted.org": true, "pypi.org": true, "pypi.python.org": true}

// pypiFile: wheels and sdists, the simple index and the JSON API.
func pypiFile(host string, segs []string, trailingSlash bool) (string, string, string, bool) {
	n := len(segs)
	// /simple/<name>/ (devpi: /+simple/<name>/).
	if n >= 2 && (segs[n-2] == "simple" || segs[n-2] == "+simple") && trailingSlash {
		return EcosystemPyPI, pypiNormalize(segs[n-1]), "", true
	}
	// /pypi/<name>/json, /pypi/<name>/<ver>/json.
	if segs[n-1] == "json" {
		if n >= 3 && segs[n-3] == "pypi" {
			return EcosystemPyPI, pypiNormalize(segs[n-2]), "", true
		}
		if n >= 4 && segs[n-4] == "pypi" {
			return EcosystemPyPI, pypiNormalize(segs[n-3]), segs[n-2], true
		}
		return "", "", "", false
	}
	under := pypiHosts[host]
	for _, s := range segs[:n-1] {
		if s == "packages" || s == "+f" {
			under = true
		}
	}
	if !under {
		return "", "", "", false
	}
	file := segs[n-1]
	if stem, ok := strings.CutSuffix(file, ".whl"); ok {
		// {name}-{ver}(-{build})?-{py}-{abi}-{platform}.whl
		p := strings.Split(stem, "-")
		if (len(p) != 5 && len(p) != 6) || p[0] == "" || !startsWithDigit(p[1]) {
			return "", "", "", false
		}
		return EcosystemPyPI, pypiNormalize(p[0]), p[1], true
	}
	for _, ext := range []string{".tar.gz", ".zip", ".tar.bz2", ".tgz"} {
		stem, ok := strings.CutSuffix(file, ext)
		if !ok {
			continue
		}
		// {name}-{ver}: the version starts after the last '-' that is
		// followed by a digit (old sdist names contain '-').
		for i := len(stem) - 1; i > 0; i-- {
			if stem[i] == '-' && i+1 < len(stem) && isDigit(stem[i+1]) {
				return EcosystemPyPI, pypiNormalize(stem[:i]), stem[i+1:], true
			}
		}
		return "", "", "", false
	}
	return "", "", "", false
}

var pypiSep = regexp.MustCompile(`[-_.]+`)

// pypiNormalize is PEP 503 name normalisation.
func pypiNormalize(name string) string {
	return pypiSep.ReplaceAllString(strings.ToLower(name), "-")
}

func startsWithDigit(s string) bool { return s != "" && isDigit(s[0]) }

func isDigit(c byte) bool { return unicode.IsDigit(rune(c)) }
