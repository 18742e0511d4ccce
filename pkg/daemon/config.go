package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"gopkg.in/yaml.v3"

	"github.com/sluice-dev/sluice/pkg/defaults"
)

// Config is the daemon's configuration file (YAML). Flags override it.
type Config struct {
	// Socket is the control socket path (mode 0600, root only).
	Socket string `yaml:"socket"`
	// StateDir keeps sandbox records, CAs, the secret store and its key.
	StateDir string `yaml:"state_dir"`
	// PinDir is the bpffs directory of pinned maps and links.
	PinDir string `yaml:"bpffs"`
	// CgroupRoot resolves relative --cgroup paths (default: the cgroup2 mount).
	CgroupRoot string `yaml:"cgroup_root"`
	// DNSUpstreams are HOST:PORT upstream resolvers (default /etc/resolv.conf).
	DNSUpstreams []string `yaml:"dns_upstreams"`
	// DNSAllowLoopback lets loopback addresses in upstream DNS answers reach
	// sandboxes (off by default: DNS rebinding onto the host's loopback).
	DNSAllowLoopback bool `yaml:"dns_allow_loopback"`
	// UpstreamCAs are PEM files trusted for upstream TLS besides system roots.
	UpstreamCAs []string `yaml:"upstream_ca"`
	// Audit is the audit sink (audit.OpenSink): a file path, "-" for
	// standard error, "" for none.
	Audit string `yaml:"audit"`
	// AuditMaxSizeMB and AuditMaxFiles rotate the audit file.
	AuditMaxSizeMB int `yaml:"audit_max_size_mb"`
	AuditMaxFiles  int `yaml:"audit_max_files"`
	// Metrics is an optional listen address for Prometheus /metrics.
	Metrics string `yaml:"metrics"`
	// SecretProviders are looked up in order after the store: "env:" or
	// "env:PREFIX_", "file:/run/secrets".
	SecretProviders []string `yaml:"secret_providers"`
	// SecretKeyFile overrides the store key location (default STATE/secrets.key).
	SecretKeyFile string `yaml:"secret_key_file"`
	// Fences are cgroups relative to the cgroup2 mount (docker,
	// system.slice, kubepods.slice): every cgroup created below one is
	// refused all egress until it is attached with a policy.
	Fences []string `yaml:"fence"`
}

// LoadConfig reads a config file; an empty path gives the defaults.
func LoadConfig(path string) (Config, error) {
	c := Config{}
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return c, fmt.Errorf("reading config: %w", err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
			return c, fmt.Errorf("%s: %w", path, err)
		}
	}
	c.defaults()
	return c, nil
}

func (c *Config) defaults() {
	if c.Socket == "" {
		c.Socket = defaults.Socket
	}
	if c.StateDir == "" {
		c.StateDir = defaults.StateDir
	}
}
