#!/usr/bin/env bash
# Runs every fuzz target in the module for a bounded time each.
# Usage: scripts/fuzz.sh [DURATION]   (default 30s)
#
# A failure that wrote a failing input under testdata/fuzz/TARGET/ fails
# the run at once. A failure without one that only says "context deadline
# exceeded" is Go's fuzz coordinator racing its own -fuzztime deadline
# (go.dev/issue/75804, fixed in Go 1.27, present in 1.26): that target is
# run once more, and fails the run if it fails again.
set -euo pipefail
t="${1:-30s}"
cd "$(dirname "$0")/.."
log=$(mktemp /tmp/sluice-fuzz.XXXXXX)
trap 'rm -f "$log"' EXIT
count() { { ls "$1" 2>/dev/null || true; } | wc -l; } # files in a corpus directory
for pkg in $(go list ./...); do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	for f in $(grep -hoE '^func (Fuzz[A-Za-z0-9_]+)' "$dir"/*_test.go 2>/dev/null | awk '{print $2}'); do
		for attempt in 1 2; do
			echo "fuzz $pkg $f ($t)"
			before=$(count "$dir/testdata/fuzz/$f")
			if go test -run '^$' -fuzz "^${f}\$" -fuzztime "$t" "$pkg" >"$log" 2>&1; then
				break
			fi
			after=$(count "$dir/testdata/fuzz/$f")
			if [ "$attempt" = 1 ] && [ "$after" = "$before" ] && tail -n 5 "$log" | grep -q 'context deadline exceeded'; then
				echo "fuzz $f: stopped by Go's fuzztime deadline race (go.dev/issue/75804), no failing input; running it again"
				continue
			fi
			cat "$log"
			exit 1
		done
	done
done
