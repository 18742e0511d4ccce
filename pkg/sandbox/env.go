package sandbox

import (
	"os"
	"strings"
)

// CAEnv points the common TLS clients at the bundle (system roots plus the
// sandbox CA) and caOnly (the sandbox CA alone). Inherited values of these
// variables are replaced: one pointing at another bundle would make the
// client refuse the sandbox CA. certDir is the directory for SSL_CERT_DIR
// (hashed system roots; the sandbox CA comes from the file variables).
func CAEnv(bundle, caOnly, certDir string) []string {
	vars := []string{
		"SSL_CERT_FILE=" + bundle,
		"CURL_CA_BUNDLE=" + bundle,
		"REQUESTS_CA_BUNDLE=" + bundle,
		"GIT_SSL_CAINFO=" + bundle,
		"PIP_CERT=" + bundle,
		"NODE_EXTRA_CA_CERTS=" + caOnly,
		"CARGO_HTTP_CAINFO=" + bundle,
		"AWS_CA_BUNDLE=" + bundle,
		"DENO_CERT=" + bundle,
		"NPM_CONFIG_CAFILE=" + bundle,
		"GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=" + bundle,
		"NIX_SSL_CERT_FILE=" + bundle,
		"CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE=" + bundle,
		"HTTPLIB2_CA_CERTS=" + bundle,
		"SSL_CERT_DIR=" + certDir,
		"SLUICE_CA_FILE=" + caOnly,
	}
	return vars
}

// SystemCertDir is the directory given as SSL_CERT_DIR: the host's hashed
// roots when there are any, else dir.
func SystemCertDir(dir string) string {
	for _, d := range []string{"/etc/ssl/certs", "/etc/pki/tls/certs"} {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			return d
		}
	}
	return dir
}

// EnvOptions says how to build the command's environment.
type EnvOptions struct {
	// SecretNames are dropped by name: the policy's secret names and the
	// --secret-env variables.
	SecretNames []string
	// SecretValues are dropped by value (any variable whose value equals
	// one, whatever its name). Empty values are ignored.
	SecretValues []string
	// Set replaces or adds variables (CA variables, the policy's env).
	Set []string
	// User, when not nil, sets HOME, USER and LOGNAME (USER and LOGNAME
	// only when the user has a name); Home is the home to use.
	User *Identity
	Home string
}

// BuildEnv returns base without the secret variables, with o.Set and the
// user's variables in place of inherited ones of the same name.
func BuildEnv(base []string, o EnvOptions) []string {
	dropName := map[string]bool{}
	for _, n := range o.SecretNames {
		dropName[n] = true
	}
	dropValue := map[string]bool{}
	for _, v := range o.SecretValues {
		if v != "" {
			dropValue[v] = true
		}
	}
	set := append([]string(nil), o.Set...)
	if o.User != nil {
		if o.Home != "" {
			set = append(set, "HOME="+o.Home)
		}
		if o.User.Name != "" {
			set = append(set, "USER="+o.User.Name, "LOGNAME="+o.User.Name)
		} else {
			dropName["USER"], dropName["LOGNAME"] = true, true
		}
		// Variables that name the invoking user's session, useless or
		// misleading for another uid.
		for _, n := range []string{"MAIL", "XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS", "SUDO_COMMAND", "SUDO_USER", "SUDO_UID", "SUDO_GID"} {
			dropName[n] = true
		}
	}
	for _, kv := range set {
		k, _, _ := strings.Cut(kv, "=")
		dropName[k] = true
	}
	out := make([]string, 0, len(base)+len(set))
	for _, kv := range base {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || dropName[k] || dropValue[v] {
			continue
		}
		out = append(out, kv)
	}
	return append(out, set...)
}
