#!/usr/bin/env bash
# loaded-runs.sh [RUNS] [REPO]: runs `.ci/run` (make test as root, CI=true)
# RUNS times in a row (default 5), each on a fresh clone of REPO (default:
# this checkout's HEAD), while two CPU-bound loops run. It is the check of
# issue #16: the suite must pass every time under load. It stops at the
# first failure and keeps that run's log; it kills only the loops it
# started.
#
#   scripts/loaded-runs.sh            # 5 runs of HEAD
#   scripts/loaded-runs.sh 2 /work/main
set -uo pipefail
runs=${1:-5}
repo=${2:-$(cd "$(dirname "$0")/.." && pwd)}
work=$(mktemp -d /tmp/sluice-loaded.XXXXXX)
chmod 755 "$work" # tests run bin/sluice as an unprivileged user too
loops=()
stop_loops() {
	local p
	for p in "${loops[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${loops[@]}"; do wait "$p" 2>/dev/null; done
	loops=()
}
trap stop_loops EXIT
trap 'exit 130' INT TERM
for _ in 1 2; do
	(while :; do :; done) &
	loops+=("$!")
done
echo "loaded-runs: $runs runs of $(git -C "$repo" rev-parse --short HEAD), busy loops: ${loops[*]}, logs in $work"
for i in $(seq "$runs"); do
	rm -rf "$work/clone"
	git clone -q "$repo" "$work/clone" || exit 1
	start=$(date +%s)
	if (cd "$work/clone" && CI=true bash .ci/run) >"$work/run$i.log" 2>&1; then
		echo "run $i: passed in $(($(date +%s) - start)) s (load $(cut -d' ' -f1 /proc/loadavg))"
	else
		echo "run $i: FAILED after $(($(date +%s) - start)) s; log: $work/run$i.log"
		grep -E -- '^(--- FAIL|FAIL|=== .*FAILED|make test: failed)' "$work/run$i.log" | head -20
		exit 1
	fi
done
rm -rf "$work/clone"
echo "loaded-runs: all $runs runs passed"
