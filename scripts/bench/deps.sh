#!/usr/bin/env bash
# Installs the benchmark's peers and load generators from Debian, idempotently.
# A package the archive does not carry is skipped with a note, never fatal:
# run.sh reports the rows that need it as "n/a".
set -uo pipefail
[ "$(id -u)" -eq 0 ] || { echo "scripts/bench/deps.sh: needs root" >&2; exit 1; }

# package:command that proves it is installed
wanted=(
	hey:hey
	nghttp2-client:h2load
	wrk:wrk
	squid-openssl:squid
	mitmproxy:mitmdump
	dnsmasq-base:dnsmasq
	unbound:unbound
	dnsperf:dnsperf
	curl:curl
)
need=()
for pc in "${wanted[@]}"; do
	p=${pc%%:*} c=${pc##*:}
	command -v "$c" >/dev/null 2>&1 || [ -x "/usr/sbin/$c" ] || need+=("$p")
done
[ ${#need[@]} -eq 0 ] && exit 0

export DEBIAN_FRONTEND=noninteractive
# apt-cache knows nothing before the first update.
candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }'; }
if [ -z "$(candidate "${need[0]}")" ] || [ "$(candidate "${need[0]}")" = "(none)" ]; then
	apt-get update -qq >/dev/null 2>&1 || true
fi
avail=()
for p in "${need[@]}"; do
	c=$(candidate "$p")
	if [ -n "$c" ] && [ "$c" != "(none)" ]; then
		avail+=("$p")
	else
		echo "scripts/bench/deps.sh: $p is not in the archive; its rows will read n/a" >&2
	fi
done
[ ${#avail[@]} -eq 0 ] && exit 0
echo "scripts/bench/deps.sh: installing ${avail[*]}" >&2
# Packaged daemons (squid) must not start as services: run.sh starts its own
# instances on loopback ports and stops them.
rc_added=
if [ ! -e /usr/sbin/policy-rc.d ]; then
	printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && rc_added=1
fi
for p in "${avail[@]}"; do
	apt-get install -y -qq --no-install-recommends "$p" >/dev/null 2>&1 ||
		echo "scripts/bench/deps.sh: installing $p failed; its rows will read n/a" >&2
done
[ -n "$rc_added" ] && rm -f /usr/sbin/policy-rc.d
exit 0
