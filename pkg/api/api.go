package api

import "time"

// AttachRequest is the body of POST /v1/sandboxes.
type AttachRequest struct {
	Name       string `json:"name"`
	Cgroup     string `json:"cgroup,omitempty"`
	PID        int    `json:"pid,omitempty"`
	PolicyFile string `json:"policy_file"` // for messages
	Policy     string `json:"policy"`      // YAML text
	// Labels (`--label k=v`) replace the sandbox's labels; nil keeps those
	// of a sandbox being re-attached.
	Labels map[string]string `json:"labels,omitempty"`
	// Rootfs is the container's root file system in its mount namespace,
	// from an OCI hook that runs before pivot_root (see pkg/daemon trust.go).
	Rootfs string `json:"rootfs,omitempty"`
}

// Info describes an attached sandbox in API answers.
type Info struct {
	Name     string `json:"name"`
	Cgroup   string `json:"cgroup"`
	CgroupID uint64 `json:"cgroup_id"`
	Netns    string `json:"netns,omitempty"`
	Policy   string `json:"policy_file"`
	Mode     string `json:"mode"`
	Rules    int    `json:"rules"`
	// ProxyPort is the proxy's TCP port on 127.0.0.1 and ::1 (TCP DNS goes
	// there too). Every sandbox of the daemon's network namespace shares
	// it, and their IPv6 resolver is [::1]:ProxyPort over UDP; a sandbox
	// in its own namespace has its own there.
	ProxyPort uint16 `json:"proxy_port"`
	// DNSPort is the sandbox's own UDP resolver port on 127.0.0.1 (and on
	// ::1 in its own network namespace).
	DNSPort uint16    `json:"dns_port"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
	// Warnings are the policy's warnings (file:line:col: field: message).
	Warnings []string `json:"warnings,omitempty"`
	// Labels are the sandbox's labels (`--label k=v`, pod labels).
	Labels map[string]string `json:"labels,omitempty"`
	// RunPID is the process of a `sluice run` sandbox (the run records
	// `sluice list` reads); 0 for the daemon's sandboxes.
	RunPID int `json:"run_pid,omitempty"`
}

// Error is the body of every answer whose status is not 2xx.
type Error struct {
	Error string `json:"error"`
}
