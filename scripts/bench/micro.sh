#!/usr/bin/env bash
# Go micro-benchmarks of the hot paths (issue #9, acceptance 3): runs every
# Benchmark in ./pkg/... with -benchmem and a short -benchtime, prints the
# results, and summarises allocs/op for the hot paths that should allocate
# nothing (policy match, DNS cache hit, original-destination lookup) next to
# the ones where some allocation is expected.
#
# Environment: BENCHTIME (default 200ms), MICRO_OUT (raw output, default
# /tmp/sluice-micro.txt), MICRO_PKGS (default ./pkg/...).
set -euo pipefail
cd "$(dirname "$0")/../.."
BENCHTIME=${BENCHTIME:-200ms}
OUT=${MICRO_OUT:-/tmp/sluice-micro.txt}
PKGS=${MICRO_PKGS:-./pkg/...}

# shellcheck disable=SC2086
go test -run '^$' -bench . -benchmem -benchtime "$BENCHTIME" -count 1 $PKGS 2>&1 | tee "$OUT" |
	grep -E '^(Benchmark|ok|FAIL|---|panic)' || true

echo
echo "== hot paths: allocs/op (0 expected where marked)"
# pattern;label;zero-expected
hot=(
	'policy .*BenchmarkMatch;policy match (name, conn, addr, request);yes'
	'dnsproxy .*Benchmark(CacheHit|FastPath);DNS cache hit;yes'
	'dnsproxy .*BenchmarkServeDNSCached;DNS cached answer through the handler;no'
	'enforcer .*Benchmark.*(Orig|Lookup);original-destination lookup;yes'
	'proxy .*BenchmarkPeekClientHello;SNI peek;no'
	'proxy .*BenchmarkHeaderInjection;header injection;no'
	'tlsca .*BenchmarkLeafCacheHit;leaf-cert cache hit;no'
	'proxy .*BenchmarkIntercept;intercept round trip (in-process);no'
	'proxy .*BenchmarkSplice;splice round trip (in-process);no'
)
# One line per benchmark: package, name, ns/op, allocs/op (go test prints
# "pkg:" before a package's benchmarks; custom metrics shift the columns).
awk '/^pkg: / { pkg = $2; sub(/.*\//, "", pkg) }
	/^Benchmark/ { ns = "-"; al = "-"
		for (i = 3; i <= NF; i++) { if ($i == "ns/op") ns = $(i - 1); if ($i == "allocs/op") al = $(i - 1) }
		print pkg, $1, ns, al }' "$OUT" >"$OUT.lines"
printf '%-42s %-48s %12s %10s %7s\n' "hot path" "benchmark" "ns/op" "allocs/op" "zero?"
for h in "${hot[@]}"; do
	IFS=';' read -r pat label zero <<<"$h"
	lines=$(grep -E "^$pat" "$OUT.lines" || true)
	if [ -z "$lines" ]; then
		printf '%-42s %-48s %12s %10s %7s\n' "$label" "(no benchmark yet)" "-" "-" "-"
		continue
	fi
	while read -r pkg name ns allocs; do
		verdict=
		if [ "$zero" = yes ]; then
			if [ "$allocs" = 0 ]; then verdict=ok; else verdict=MISSED; fi
		fi
		printf '%-42s %-48s %12s %10s %7s\n' "$label" "$pkg.$name" "$ns" "$allocs" "$verdict"
	done <<<"$lines"
done
rm -f "$OUT.lines"
echo "raw output: $OUT"
