#!/usr/bin/env bash
# Install the sluice .deb on this machine and check that the packaged
# daemon works: it starts with the packaged config, answers `sluice list`,
# attaches a sandbox (a process in a fresh cgroup) and enforces on it.
#
#   sudo scripts/package-test.sh [PATH.deb]   (default: build with package.sh)
#
# Under systemd (PID 1) it starts the unit; otherwise it runs
# `sluice daemon --config /etc/sluice/config.yaml` in the background. The
# package is purged at the end unless KEEP_INSTALLED=1. Traffic stays on
# loopback. Exit 0 on success.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "package-test: needs root (dpkg -i, cgroups, eBPF)" >&2; exit 1; }

step() { printf '\n== %s\n' "$*"; }
fail() { echo "package-test: FAIL: $*" >&2; exit 1; }

DEB=${1:-}
if [ -z "$DEB" ]; then
	out=$(mktemp -d)
	scripts/package.sh "$out"
	DEB=$(ls "$out"/sluice_*.deb)
fi

work=$(mktemp -d)
daemon_pid=""
sleeper=""
server=""
cg=""
systemd=false
[ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] && [ -d /run/systemd/system ] && systemd=true

cleanup() {
	set +e
	/usr/bin/sluice detach pkgtest >/dev/null 2>&1
	[ -n "$sleeper" ] && kill "$sleeper" 2>/dev/null
	[ -n "$server" ] && kill "$server" 2>/dev/null
	if $systemd; then systemctl stop sluice.service 2>/dev/null; fi
	if [ -n "$daemon_pid" ]; then kill "$daemon_pid" 2>/dev/null; wait "$daemon_pid" 2>/dev/null; fi
	[ -n "$cg" ] && rmdir "$cg" 2>/dev/null
	if [ "${KEEP_INSTALLED:-0}" != 1 ]; then dpkg --purge sluice >/dev/null 2>&1; fi
	rm -rf "$work"
}
trap cleanup EXIT

step "install $DEB"
dpkg -i "$DEB"
dpkg -s sluice | grep -E '^(Status|Version):'
for f in /usr/bin/sluice /lib/systemd/system/sluice.service /etc/sluice/config.yaml \
	/usr/share/man/man1/sluice.1.gz /usr/share/man/man1/sluice-daemon.1.gz \
	/usr/share/bash-completion/completions/sluice /usr/share/containers/oci/hooks.d/sluice.json; do
	[ -e "$f" ] || fail "$f was not installed"
done
[ "$(stat -c %a /etc/sluice/config.yaml)" = 600 ] || fail "/etc/sluice/config.yaml is not mode 0600"
if command -v systemd-analyze >/dev/null; then
	systemd-analyze verify /lib/systemd/system/sluice.service || fail "the unit does not verify"
fi
man -w sluice-doctor >/dev/null 2>&1 || [ -f /usr/share/man/man1/sluice-doctor.1.gz ] || fail "no man page for sluice doctor"

step "sluice doctor"
/usr/bin/sluice doctor || fail "doctor reports a failure on this host"

step "start the daemon (systemd running: $systemd)"
if $systemd; then
	systemctl start sluice.service
else
	/usr/bin/sluice daemon --config /etc/sluice/config.yaml >"$work/daemon.log" 2>&1 &
	daemon_pid=$!
fi
for _ in $(seq 100); do
	/usr/bin/sluice list >/dev/null 2>&1 && break
	sleep 0.1
done
/usr/bin/sluice list || { cat "$work/daemon.log" 2>/dev/null; fail "the daemon does not answer sluice list"; }
[ "$(stat -c %a /run/sluice/sluice.sock)" = 600 ] || fail "control socket is not mode 0600"

step "attach a sandbox"
cgmnt=$(awk '$9 == "cgroup2" {print $5; exit}' FS=' ' /proc/self/mountinfo)
[ -n "$cgmnt" ] || fail "no cgroup2 mount"
cg="$cgmnt/sluice-pkgtest-$$"
mkdir "$cg"
# A loopback service the sandbox must not reach (host loopback is refused
# unless a rule names it), and a long-lived sandbox process.
python3 -c 'import http.server,sys
s=http.server.HTTPServer(("127.0.0.1",0),http.server.SimpleHTTPRequestHandler)
print(s.server_address[1],flush=True); s.serve_forever()' >"$work/port" 2>/dev/null &
server=$!
for _ in $(seq 50); do [ -s "$work/port" ] && break; sleep 0.1; done
port=$(head -1 "$work/port")
sh -c "echo \$\$ > $cg/cgroup.procs && exec sleep 300" &
sleeper=$!
sleep 0.2
cat >/etc/sluice/policies/pkgtest.yaml <<'POLICY'
version: 1
rules:
  - name: example
    hosts: [allowed.example.test]
POLICY
/usr/bin/sluice attach --policy /etc/sluice/policies/pkgtest.yaml --pid "$sleeper" --name pkgtest
/usr/bin/sluice list --json | grep -q '"name": "pkgtest"' || fail "pkgtest is not listed"

step "enforcement"
curl -sS --max-time 5 -o /dev/null "http://127.0.0.1:$port/" || fail "the loopback server is not reachable from the host"
if sh -c "echo \$\$ > $cg/cgroup.procs && exec curl -sS --max-time 5 -o /dev/null http://127.0.0.1:$port/" 2>"$work/curl.err"; then
	fail "the sandbox reached the host's loopback service"
fi
echo "refused in the sandbox: $(cat "$work/curl.err")"

step "detach"
/usr/bin/sluice detach pkgtest
/usr/bin/sluice list --json | grep -q pkgtest && fail "pkgtest still listed after detach"
rm -f /etc/sluice/policies/pkgtest.yaml
echo
echo "package-test: PASS"
