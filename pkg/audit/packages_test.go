package audit

import "testing"

func TestClassifyPackage(t *testing.T) {
	tests := []struct {
		name      string
		host      string
		path      string
		eco, pkg  string
		ver       string
		wantMatch bool
	}{
		// npm
		{"npm tarball", "registry.npmjs.org", "/lodash/-/lodash-4.17.21.tgz", "npm", "lodash", "4.17.21", true},
		{"npm scoped", "registry.npmjs.org", "/@types/node/-/node-20.11.5.tgz", "npm", "@types/node", "20.11.5", true},
		{"npm scoped encoded", "registry.npmjs.org", "/@babel%2fcore/-/core-7.24.0.tgz", "npm", "@babel/core", "7.24.0", true},
		{"npm prerelease", "registry.npmjs.org", "/react/-/react-19.0.0-rc.1.tgz", "npm", "react", "19.0.0-rc.1", true},
		{"npm hyphenated name", "registry.npmjs.org", "/is-number/-/is-number-7.0.0.tgz", "npm", "is-number", "7.0.0", true},
		{"npm mirror nexus", "npm.mirror.internal", "/repository/npm-proxy/left-pad/-/left-pad-1.3.0.tgz", "npm", "left-pad", "1.3.0", true},
		{"npm mirror with port and query", "npm.mirror.internal:8443", "/left-pad/-/left-pad-1.3.0.tgz?cache=" + secretA, "npm", "left-pad", "1.3.0", true},
		{"npm metadata is not a download", "registry.npmjs.org", "/lodash", "", "", "", false},
		{"npm file name mismatch", "registry.npmjs.org", "/lodash/-/underscore-1.0.0.tgz", "", "", "", false},
		// PyPI
		{"pypi wheel", "files.pythonhosted.org", "/packages/3b/00/2344469e2084fb287c2e0b57b72910309874c3245463acd6cf5e3db69324/requests-2.31.0-py3-none-any.whl", "pypi", "requests", "2.31.0", true},
		{"pypi wheel build tag", "files.pythonhosted.org", "/packages/aa/bb/cc/numpy-1.26.4-1-cp312-cp312-manylinux_2_17_x86_64.whl", "pypi", "numpy", "1.26.4", true},
		{"pypi wheel normalised name", "files.pythonhosted.org", "/packages/aa/bb/cc/zope.interface-6.2-cp312-cp312-linux_x86_64.whl", "pypi", "zope-interface", "6.2", true},
		{"pypi sdist", "files.pythonhosted.org", "/packages/source/r/requests/requests-2.31.0.tar.gz", "pypi", "requests", "2.31.0", true},
		{"pypi sdist hyphenated name", "files.pythonhosted.org", "/packages/aa/bb/cc/python-dateutil-2.8.2.tar.gz", "pypi", "python-dateutil", "2.8.2", true},
		{"pypi sdist digit in name", "files.pythonhosted.org", "/packages/aa/bb/cc/py-2fa-1.0.1.tar.gz", "pypi", "py-2fa", "1.0.1", true},
		{"pypi simple index", "pypi.org", "/simple/Django/", "pypi", "django", "", true},
		{"pypi json api version", "pypi.org", "/pypi/requests/2.31.0/json", "pypi", "requests", "2.31.0", true},
		{"pypi mirror nexus", "pypi.mirror.internal", "/repository/pypi-proxy/packages/requests/2.31.0/requests-2.31.0-py3-none-any.whl", "pypi", "requests", "2.31.0", true},
		{"pypi devpi simple", "devpi.internal", "/root/pypi/+simple/flask/", "pypi", "flask", "", true},
		{"tarball outside packages tree is not pypi", "github.com", "/foo/bar/archive/bar-1.0.tar.gz", "", "", "", false},
		{"wheel with too few parts", "files.pythonhosted.org", "/packages/a/b/c/requests-2.31.0.whl", "", "", "", false},
		// Go module proxy
		{"go zip", "proxy.golang.org", "/golang.org/x/net/@v/v0.62.0.zip", "go", "golang.org/x/net", "v0.62.0", true},
		{"go mod", "proxy.golang.org", "/github.com/spf13/cobra/@v/v1.10.2.mod", "go", "github.com/spf13/cobra", "v1.10.2", true},
		{"go info", "proxy.golang.org", "/gopkg.in/yaml.v3/@v/v3.0.1.info", "go", "gopkg.in/yaml.v3", "v3.0.1", true},
		{"go case escaping", "proxy.golang.org", "/github.com/!burnt!sushi/toml/@v/v1.3.2.zip", "go", "github.com/BurntSushi/toml", "v1.3.2", true},
		{"go escaped version", "proxy.golang.org", "/example.com/m/@v/v1.0.0-!r!c1.zip", "go", "example.com/m", "v1.0.0-RC1", true},
		{"go mirror prefix", "artifactory.internal", "/api/go/go-remote/github.com/pkg/errors/@v/v0.9.1.zip", "go", "github.com/pkg/errors", "v0.9.1", true},
		{"go athens", "athens.internal:3000", "/github.com/pkg/errors/@v/v0.9.1.zip", "go", "github.com/pkg/errors", "v0.9.1", true},
		{"go unescaped upper case tolerated", "proxy.golang.org", "/github.com/BurntSushi/toml/@v/v1.3.2.zip", "go", "github.com/BurntSushi/toml", "v1.3.2", true},
		{"go bad escape", "proxy.golang.org", "/github.com/!9x/toml/@v/v1.3.2.zip", "", "", "", false},
		{"go list is not a download", "proxy.golang.org", "/golang.org/x/net/@v/list", "", "", "", false},
		// crates.io
		{"crates api download", "crates.io", "/api/v1/crates/serde/1.0.197/download", "crates", "serde", "1.0.197", true},
		{"crates static", "static.crates.io", "/crates/serde/serde-1.0.197.crate", "crates", "serde", "1.0.197", true},
		{"crates static hyphenated", "static.crates.io", "/crates/serde-json/serde-json-1.0.0.crate", "crates", "serde-json", "1.0.0", true},
		{"crates mirror", "crates.mirror.internal", "/repository/cargo/crates/tokio/1.36.0/download", "crates", "tokio", "1.36.0", true},
		{"crates index is not a download", "index.crates.io", "/se/rd/serde", "", "", "", false},
		// Maven
		{"maven jar", "repo1.maven.org", "/maven2/org/apache/commons/commons-lang3/3.14.0/commons-lang3-3.14.0.jar", "maven", "org.apache.commons:commons-lang3", "3.14.0", true},
		{"maven pom", "repo.maven.apache.org", "/maven2/com/google/guava/guava/33.0.0-jre/guava-33.0.0-jre.pom", "maven", "com.google.guava:guava", "33.0.0-jre", true},
		{"maven classifier", "repo1.maven.org", "/maven2/junit/junit/4.13.2/junit-4.13.2-sources.jar", "maven", "junit:junit", "4.13.2", true},
		{"maven nexus mirror", "nexus.internal", "/repository/maven-public/org/slf4j/slf4j-api/2.0.12/slf4j-api-2.0.12.jar", "maven", "org.slf4j:slf4j-api", "2.0.12", true},
		{"maven artifactory mirror", "jfrog.internal", "/artifactory/libs-release/org/slf4j/slf4j-api/2.0.12/slf4j-api-2.0.12.jar", "maven", "org.slf4j:slf4j-api", "2.0.12", true},
		{"maven gradle plugin portal", "plugins.gradle.org", "/m2/org/jetbrains/kotlin/kotlin-gradle-plugin/1.9.22/kotlin-gradle-plugin-1.9.22.pom", "maven", "org.jetbrains.kotlin:kotlin-gradle-plugin", "1.9.22", true},
		{"maven snapshot", "nexus.internal", "/repository/snapshots/com/acme/app/1.0-SNAPSHOT/app-1.0-20240101.120000-3.jar", "maven", "com.acme:app", "1.0-SNAPSHOT", true},
		{"maven checksum is not a download", "repo1.maven.org", "/maven2/junit/junit/4.13.2/junit-4.13.2.jar.sha1", "", "", "", false},
		{"maven metadata is not a download", "repo1.maven.org", "/maven2/junit/junit/maven-metadata.xml", "", "", "", false},
		{"maven name mismatch", "repo1.maven.org", "/maven2/junit/junit/4.13.2/other-4.13.2.jar", "", "", "", false},
		// Not packages
		{"api call", "api.github.com", "/repos/x/y/issues", "", "", "", false},
		{"root", "example.com", "/", "", "", "", false},
		{"empty", "", "", "", "", "", false},
		{"absolute form", "", "http://registry.npmjs.org/lodash/-/lodash-4.17.21.tgz", "npm", "lodash", "4.17.21", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			eco, pkg, ver, ok := ClassifyPackage(tt.host, tt.path)
			if ok != tt.wantMatch || eco != tt.eco || pkg != tt.pkg || ver != tt.ver {
				t.Fatalf("ClassifyPackage(%q, %q) = %q, %q, %q, %v; want %q, %q, %q, %v",
					tt.host, tt.path, eco, pkg, ver, ok, tt.eco, tt.pkg, tt.ver, tt.wantMatch)
			}
		})
	}
}

func FuzzClassifyPackage(f *testing.F) {
	f.Add("registry.npmjs.org", "/@types/node/-/node-20.11.5.tgz")
	f.Add("proxy.golang.org", "/github.com/!burnt!sushi/toml/@v/v1.3.2.zip")
	f.Add("repo1.maven.org", "/maven2/junit/junit/4.13.2/junit-4.13.2.jar")
	f.Add("files.pythonhosted.org", "/packages/a/b/c/py-2fa-1.0.1.tar.gz")
	f.Fuzz(func(t *testing.T, host, path string) {
		eco, pkg, _, ok := ClassifyPackage(host, path)
		if ok && (eco == "" || pkg == "") {
			t.Fatalf("ok with empty ecosystem or package: %q %q", eco, pkg)
		}
	})
}
