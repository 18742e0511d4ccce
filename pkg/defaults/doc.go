// Package defaults holds the paths every sluice command, the daemon and the
// packaged files (scripts/deploy: config.yaml, the systemd unit, nfpm and
// package.sh) agree on, and the environment variables that override them.
// It imports nothing and decides nothing else: a default changes here and
// nowhere else. Tests in this package check that the packaged files agree.
package defaults
