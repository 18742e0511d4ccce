#!/usr/bin/env bash
# Per-program cost of sluice's eBPF programs on the connect() path (issue
# #21): runs scripts/bench/connect inside `sluice run` (direct CIDR rule, so
# only the kernel path runs), with kernel.bpf_stats_enabled=1 for the run
# only, and prints run_time_ns / run_cnt of each program the sluice process
# loaded (bpftool; programs that appeared after the start, so run it while
# no other sluice starts), sampled twice during the load. Root; loopback only.
# Environment: SLUICE (default bin/sluice), PROFILE_SECONDS (3), PROFILE_MIX=1
# (each iteration also runs connect6, sendmsg4/6 and recvmsg4/6: connect -mix).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" -eq 0 ] || { echo "needs root" >&2; exit 1; }
command -v bpftool >/dev/null || { echo "needs bpftool" >&2; exit 1; }
SLUICE=${SLUICE:-bin/sluice}
SECS=${PROFILE_SECONDS:-3}
work=$(mktemp -d /tmp/sluice-connprof.XXXXXX)
chmod 755 "$work" # the sandboxed command may run as another user
pids=()
old_stats=$(cat /proc/sys/kernel/bpf_stats_enabled)
cleanup() {
	echo "$old_stats" >/proc/sys/kernel/bpf_stats_enabled
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT
go build -o "$work/" ./scripts/bench/connect
"$work/connect" -serve 127.0.0.1:0 >"$work/addr" &
pids+=($!)
for _ in $(seq 50); do [ -s "$work/addr" ] && break; sleep 0.05; done
addr=$(cat "$work/addr")
cat >"$work/direct.yaml" <<POL
version: 1
rules:
  - name: bench-direct
    cidrs: [127.0.0.1/32]
    ports: [${addr##*:}]
    direct: true
POL
bpftool prog show --json | python3 -c 'import json, sys; print("\n".join(str(p["id"]) for p in json.load(sys.stdin)))' >"$work/before"
echo 1 >/proc/sys/kernel/bpf_stats_enabled
"$SLUICE" run --no-summary --policy "$work/direct.yaml" --dns-upstream 127.0.0.1:1 -- \
	"$work/connect" ${PROFILE_MIX:+-mix} -n 1000000 -rounds 1 "$addr" >"$work/out" 2>&1 &
run_pid=$!
pids+=($run_pid)
snap() { # sluice programs loaded since the start (by this run): name id cnt ns
	bpftool prog show --json | python3 -c '
import json, sys
before = set(open(sys.argv[1]).read().split())
for p in json.load(sys.stdin):
    if str(p["id"]) not in before and p.get("name", "").startswith("sluice"):
        print(p.get("name", "?"), p["id"], p.get("run_cnt", 0), p.get("run_time_ns", 0))
' "$work/before"
}
# wait until the programs are loaded and the load runs
for _ in $(seq 100); do [ -n "$(snap)" ] && break; sleep 0.1; done
sleep 1
snap >"$work/a"
sleep "$SECS"
snap >"$work/b"
kill "$run_pid" 2>/dev/null || true
join -j 2 <(sort -k2,2 "$work/a") <(sort -k2,2 "$work/b") | awk '
	{ dc = $6 - $3; dn = $7 - $4; if (dc > 0) printf "%-24s %10d calls %8.0f ns/call\n", $2, dc, dn / dc }' | sort -k1,1
