#!/usr/bin/env bash
# The suite of make test (after deps and build), scheduled for wall time on
# a 2-core machine:
#
#   check-generate  |==|
#   test/e2e           |=======================|
#   packages, -race                            |==============|
#   lint (nice 19)     |...................................=====|
#   fuzz compile (nice 19)  |..............................|
#   fuzz smoke run                                            |=====|
#
# test/e2e and the raced packages each keep both cores busy most of the
# time (alone: e2e 77 s wall for 125 s CPU, the packages 44 s for 73 s),
# so they run one after the other: run together they took 440 s of CPU
# instead of 305 (context switches, Go schedulers spinning against each
# other, caches) and ended later than in turn. lint (whose deadcode run is
# CPU-bound) and the fuzzing binaries' compile run at the lowest priority
# from the start, in the gaps the tests leave while they wait on daemons,
# sandboxes and loopback peers, and at the normal one once the tests are
# done; the fuzz run, whose targets each fuzz for a fixed wall time, comes
# last, beside what is left of lint.
#
# - test/e2e runs without -race: the programs under test there are
#   bin/sluice (built without -race) and real clients; the test binary
#   holds loopback helpers (pkg/testutil, raced by the package tests) and
#   is re-executed as the probe inside sandboxes hundreds of times, and a
#   -race binary takes 1.2-1.5 s to start on the 2-core CI machine (a plain
#   one 0.07 s). For the same reason the raced packages' probes
#   (testutil.RunProbe) run bin/sluice-probe (./test/probe), named by
#   SLUICE_PROBE_BIN.
# - The fuzz run keeps the normal priority: its targets fuzz for a fixed
#   wall time each, and a starved worker makes Go's fuzztime deadline race
#   (below, in scripts/fuzz.sh) likelier.
#
# Each part's output is printed when it ends; the script fails if any part
# failed, after all have ended. Flags: GOTEST_FLAGS (the packages),
# E2E_FLAGS (test/e2e), FUZZTIME (per fuzz target).
set -uo pipefail
set -m # each part in its own process group, so that an interrupt ends its tests too
cd "$(dirname "$0")/.."
GO=${GO:-go}
GOTEST_FLAGS=${GOTEST_FLAGS:--race -count=1 -p 4 -parallel 2 -vet=off}
E2E_FLAGS=${E2E_FLAGS:--count=1 -parallel 4 -vet=off}
FUZZTIME=${FUZZTIME:-2s}
export SLUICE_BIN=$PWD/bin/sluice SLUICE_PROBE_BIN=$PWD/bin/sluice-probe
[ -x "$SLUICE_BIN" ] || { echo "test.sh: no $SLUICE_BIN: run make build"; exit 1; }
$GO build -o "$SLUICE_PROBE_BIN" ./test/probe || exit 1

logs=$(mktemp -d /tmp/sluice-test.XXXXXX)
pids=()
# start NAME CMD...: runs CMD in the background, its output in $logs/NAME.
# Its start and end times (seconds since the script started) and CPU time
# (user, system) go to $logs/NAME.time.
start() {
	local name=$1
	shift
	(
		s=$SECONDS
		"$@"
		rc=$?
		echo "$s $SECONDS" >"$logs/$name.time"
		times >"$logs/$name.cpu" # this shell's, then its children's
		exit $rc
	) >"$logs/$name" 2>&1 &
	pids+=("$!:$name")
}
failed=()
# finish NAME: waits for NAME and prints its output.
finish() {
	local p
	for p in "${pids[@]}"; do
		[ "${p#*:}" = "$1" ] || continue
		local rc=0 span
		wait "${p%%:*}" || rc=$?
		span=$({
			cat "$logs/$1.time"
			sed -En '2s/([0-9]+)m([0-9.]+)s/\1 \2/gp' "$logs/$1.cpu"
		} 2>/dev/null | awk 'NR == 1 { printf "from %ds to %ds: %ds", $1, $2, $2 - $1 } NR == 2 { printf ", CPU %ds", $1 * 60 + $2 + $3 * 60 + $4 }')
		if [ $rc = 0 ]; then
			echo "=== $1: ok ($span)"
		else
			echo "=== $1: FAILED ($span)"
			failed+=("$1")
		fi
		cat "$logs/$1"
	done
}
cleanup() {
	local p
	for p in "${pids[@]}"; do kill -TERM -- "-${p%%:*}" 2>/dev/null; done
	rm -rf "$logs"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# check-generate first and alone: it rewrites the eBPF objects that every
# test binary compiles in.
make --no-print-directory check-generate || exit 1
echo "=== probe build and check-generate: ok (${SECONDS}s)"
start e2e $GO test $E2E_FLAGS ./test/e2e/
# lint also checks that pkg/secrets is reachable from the binary (#20).
start lint nice -n 19 make --no-print-directory lint deadcode-secrets
export FUZZWORK=$logs/fuzzwork
start fuzzbuild nice -n 19 scripts/fuzz.sh --compile
finish e2e
# The longest packages first: go test compiles and starts packages in the
# order given (-p at a time); listed in their place, pkg/proxy and
# pkg/enforcer queued behind the short ones and ended last.
first=(./pkg/proxy ./pkg/enforcer ./pkg/secrets ./pkg/policy)
# shellcheck disable=SC2046 # one word per package
start packages $GO test $GOTEST_FLAGS "${first[@]}" $($GO list ./... | grep -v -e '/test/e2e$' $(printf -- '-e /%s$ ' "${first[@]#./}"))
finish packages
# The low-priority parts are now what the suite waits for: back to the
# normal priority, or under other load (the busy loops of
# scripts/loaded-runs.sh) they would hardly run at all. Raising a priority
# needs root (CI); elsewhere they stay at nice 19.
for p in "${pids[@]}"; do
	case ${p#*:} in lint | fuzzbuild) renice -n 0 -g "${p%%:*}" >/dev/null 2>&1 ;; esac
done
finish fuzzbuild
# Each target fuzzes for a fixed wall time, so the rest of lint may share
# the CPU with it.
start fuzz scripts/fuzz.sh "$FUZZTIME"
finish lint
finish fuzz
pids=()
if [ ${#failed[@]} -gt 0 ]; then
	echo "make test: failed: ${failed[*]} (scripts/test.sh: ${SECONDS}s)"
	exit 1
fi
echo "make test: ok (scripts/test.sh: ${SECONDS}s)"
