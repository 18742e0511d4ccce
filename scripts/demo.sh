#!/usr/bin/env bash
# Offline end-to-end demonstration. Everything runs on loopback: a made-up
# DNS zone, an HTTPS "API" with its own CA, and a listener that must never be
# reached. curl runs inside `sluice run` and shows three outcomes:
#   1. https://allowed.test reaches the API through the proxy, which injects
#      Authorization from a secret the sandbox never sees;
#   2. forbidden.test does not resolve (NXDOMAIN, never asked upstream);
#   3. a forbidden loopback address by IP is refused in the kernel (EPERM);
# then `sluice blocked` shows the kernel's refusal.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "make demo needs root (it loads eBPF programs and creates a cgroup)" >&2; exit 1; }

SLUICE=${SLUICE:-bin/sluice}
work=$(mktemp -d /tmp/sluice-demo.XXXXXX)
chmod 755 "$work"
# The sandbox runs as an unprivileged uid: its flag files live in a
# directory anyone may write.
mkdir -m 1777 "$work/flags"
up_pid=
cleanup() {
	[ -n "$up_pid" ] && kill "$up_pid" 2>/dev/null && wait "$up_pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/upstream" ./scripts/demo/upstream
"$work/upstream" "$work/env" &
up_pid=$!
for _ in $(seq 100); do [ -f "$work/env" ] && break; sleep 0.05; done
# shellcheck disable=SC1091
. "$work/env"

echo "== sluice demo: policy testdata/policies/demo.yaml (default deny)"
sed 's/^/   /' testdata/policies/demo.yaml
echo

export DEMO_TOKEN="demo-token-$RANDOM$RANDOM"
script='
echo "-- 1. curl https://allowed.test:'"$API_PORT"'/v1/hello (allowed, credential injected by sluice)"
curl -sS --max-time 5 https://allowed.test:'"$API_PORT"'/v1/hello && echo "   => OK" || echo "   => FAILED"
echo "-- 2. curl https://forbidden.test:'"$API_PORT"'/ (not in the policy)"
curl -sS --max-time 5 https://forbidden.test:'"$API_PORT"'/ 2>&1 | sed "s/^/   /"; echo "   => refused at DNS"
echo "-- 3. curl http://'"$FORBIDDEN_ADDR"'/ (a loopback service by IP)"
curl -sS --max-time 5 http://'"$FORBIDDEN_ADDR"'/ 2>&1 | sed "s/^/   /"; echo "   => refused in the kernel"
echo "-- the sandbox environment holds no DEMO_TOKEN: ${DEMO_TOKEN:-<unset>}"
echo "-- running as uid $(id -u), in a PID namespace of $(ls /proc | grep -c '^[0-9]') processes"
touch '"$work"'/flags/ready
while [ ! -f '"$work"'/flags/release ]; do sleep 0.05; done
'
"$SLUICE" run --name demo --policy testdata/policies/demo.yaml \
	--dns-upstream "$DNS_ADDR" --dns-allow-loopback --upstream-ca "$UPSTREAM_CA" \
	--secret-env DEMO_TOKEN --audit "$work/audit.jsonl" -- sh -c "$script" >"$work/out" 2>&1 &
run_pid=$!
for _ in $(seq 200); do [ -f "$work/flags/ready" ] && break; sleep 0.05; done
cat "$work/out"
echo
echo "== sluice blocked (read from the pinned kernel maps while the sandbox runs)"
"$SLUICE" blocked demo | tee "$work/blocked"
touch "$work/flags/release"
wait "$run_pid"
echo
echo "== audit events (JSON lines, one per decision)"
head -n 20 "$work/audit.jsonl" | sed 's/^/   /'

fail=0
grep -q "Authorization header present" "$work/out" || { echo "demo: allowed request did not get its credential"; fail=1; }
grep -qi "resolve host" "$work/out" || { echo "demo: forbidden.test was not refused at DNS"; fail=1; }
grep -qiE "Couldn't connect|Failed to connect|not permitted" "$work/out" || { echo "demo: the forbidden address was not refused"; fail=1; }
grep -q "$FORBIDDEN_ADDR" <(sed 's/  */:/g' "$work/blocked") || grep -q "${FORBIDDEN_ADDR%:*}" "$work/blocked" || { echo "demo: sluice blocked did not show the refusal"; fail=1; }
grep -q "$DEMO_TOKEN" "$work/out" "$work/audit.jsonl" "$work/blocked" && { echo "demo: the secret leaked"; fail=1; }
kill "$up_pid"; wait "$up_pid" || fail=1; up_pid=
[ "$fail" -eq 0 ] && echo "demo: all three outcomes as expected" || { echo "demo: FAILED"; exit 1; }
