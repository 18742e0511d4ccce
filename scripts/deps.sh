#!/usr/bin/env bash
# Installs what the Makefile targets need on a Debian machine. Idempotent:
# it installs only what is missing.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# Build (make generate): clang and the libbpf headers.
for p in clang-19 llvm-19 libbpf-dev; do pkg_installed "$p" || need+=("$p"); done
# Tests and demo: real clients inside the sandbox, network tools.
have curl || need+=(curl)
have git || need+=(git)
have ip || need+=(iproute2)
have dig || need+=(dnsutils)
have bpftool || need+=(bpftool)
have runc || need+=(runc)
# Container tests (test/e2e/docker_test.go): a private dockerd with its
# own containerd, images imported from local files (static busybox).
have dockerd || need+=(docker.io)
pkg_installed busybox-static || need+=(busybox-static)
have python3 || need+=(python3)
have node || need+=(nodejs)
# sluice run's boundary tests (issue 15): clients that read only the
# distribution's trust files, Debian's python3 with its libraries, pip, npm.
have wget || need+=(wget)
have php || need+=(php-cli)
pkg_installed php-curl || need+=(php-curl)
have ruby || need+=(ruby)
have java || need+=(default-jre-headless)
have npm || need+=(npm)
for p in python3-requests python3-httplib2 python3-pip; do pkg_installed "$p" || need+=("$p"); done
# git http-backend for the git clone test ships with git itself.

if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "scripts/deps.sh: missing ${need[*]}; run as root (or: sudo apt-get install ${need[*]})" >&2
		exit 1
	fi
	echo "scripts/deps.sh: installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
