#!/usr/bin/env bash
# Runs every fuzz target in the module for a bounded time each.
# Usage: scripts/fuzz.sh [DURATION]   (default 30s)
#        FUZZWORK=DIR scripts/fuzz.sh --compile   (compile only, into DIR)
#        FUZZWORK=DIR scripts/fuzz.sh [DURATION]  (run what --compile left in DIR)
#
# With FUZZWORK, make test compiles the fuzzing binaries while the other
# tests run and fuzzes once they are done (scripts/test.sh).
#
# Each package's fuzzing test binary is compiled once (all packages at
# once), then FUZZJOBS targets (default: the number of CPUs) fuzz at the
# same time, each with one worker: the same CPU as one target at a time
# with a worker per CPU, in a fraction of the wall time, and no link per
# target. Corpus entries and failing inputs go where `go test -fuzz` puts
# them (testdata/fuzz/TARGET in the package, the fuzz cache in GOCACHE).
#
# A failure that wrote a failing input under testdata/fuzz/TARGET/ fails
# the run. A failure without one that only says "context deadline
# exceeded" is Go's fuzz coordinator racing its own -fuzztime deadline
# (go.dev/issue/75804, fixed in Go 1.27, present in 1.26): that target is
# run once more, and fails the run if it fails again.
set -euo pipefail
t="${1:-30s}"
jobs="${FUZZJOBS:-$(nproc)}"
cd "$(dirname "$0")/.."
cache="$(go env GOCACHE)/fuzz"
if [ -n "${FUZZWORK:-}" ]; then
	work=$FUZZWORK
	mkdir -p "$work"
else
	work=$(mktemp -d /tmp/sluice-fuzz.XXXXXX)
	trap 'rm -rf "$work"' EXIT
fi

# compile: one instrumented test binary per package with fuzz targets, and
# the list of targets ($work/targets, written once all compiled).
compile() {
	: >"$work/targets.new"
	pids=()
	while read -r pkg dir; do
		fs=$({ grep -hoE '^func (Fuzz[A-Za-z0-9_]+)' "$dir"/*_test.go 2>/dev/null || true; } | awk '{print $2}')
		[ -n "$fs" ] || continue
		bin="$work/$(echo "$pkg" | tr / _).test"
		go test -c -vet=off -fuzz=. -o "$bin" "$pkg" >"$bin.log" 2>&1 &
		pids+=("$!:$bin")
		for f in $fs; do echo "$pkg $dir $bin $f" >>"$work/targets.new"; done
	done < <(go list -f '{{.ImportPath}} {{.Dir}}' ./...)
	for p in "${pids[@]}"; do
		if ! wait "${p%%:*}"; then
			echo "fuzz: compiling ${p#*:} failed:"
			cat "${p#*:}.log"
			exit 1
		fi
	done
	mv "$work/targets.new" "$work/targets"
}
if [ "$t" = --compile ]; then
	compile
	exit 0
fi
[ -n "${FUZZWORK:-}" ] && [ -s "$work/targets" ] || compile

count() { { ls "$1" 2>/dev/null || true; } | wc -l; } # files in a corpus directory
run_one() {
	local pkg=$1 dir=$2 bin=$3 f=$4 log="$work/$4.log" attempt before after
	for attempt in 1 2; do
		echo "fuzz $pkg $f ($t)"
		before=$(count "$dir/testdata/fuzz/$f")
		if (cd "$dir" && "$bin" -test.run='^$' -test.fuzz="^${f}\$" -test.fuzztime="$t" -test.parallel=1 \
			-test.fuzzcachedir="$cache/$pkg") >"$log" 2>&1; then
			return 0
		fi
		after=$(count "$dir/testdata/fuzz/$f")
		if [ "$attempt" = 1 ] && [ "$after" = "$before" ] && tail -n 5 "$log" | grep -q 'context deadline exceeded'; then
			echo "fuzz $f: stopped by Go's fuzztime deadline race (go.dev/issue/75804), no failing input; running it again"
			continue
		fi
		echo "fuzz $pkg $f FAILED:"
		cat "$log"
		return 1
	done
}
export -f count run_one
export t work cache
echo "fuzz: $(wc -l <"$work/targets") targets, $jobs at a time, $t each"
xargs -P "$jobs" -L 1 bash -c 'run_one "$@"' _ <"$work/targets"
