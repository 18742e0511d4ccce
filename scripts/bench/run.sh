#!/usr/bin/env bash
# sluice benchmarks (issue #9). Every figure is a ratio against a baseline
# measured in the same run, because absolute numbers drift between machines.
# Loopback only; bounded durations; everything started here is stopped on
# exit.
#
# Rows (median of BENCH_ROUNDS rounds, interleaved: every round measures
# every row once, in the same order):
#   a  direct HTTPS to the loopback upstream (hey), keep-alive and a new TLS
#      connection per request
#   b  through `sluice run`, splice rule (allowed host, no interception)
#   c  through `sluice run`, intercept rule injecting Authorization from a
#      secret, keep-alive; plus p50/p99 added latency with one client
#   d  c with a new TLS connection per request (also, informational: a and
#      c over HTTP/2)
#   e  squid ssl-bump adding the same header (explicit proxy, hey -x); and
#      c and e again at one offered load (hey -q, 60% of e's req/s in the
#      round), for CPU per request at equal load
#   f  mitmproxy adding the same header (explicit proxy, hey -x)
#   g  DNS cached-answer qps: the sluice resolver (dnsperf inside
#      `sluice run`, port 53 redirected by the kernel) against dnsmasq and
#      against unbound (one thread per CPU), both caching forwarders to the
#      same authoritative server
#   h  connect() cost inside against outside a sandbox (direct CIDR rule)
#   i  bulk download (BENCH_BULK_BYTES, default 1 GiB) direct, through
#      splice and through intercept
# b and i splice (the default user-space splice) are also measured with
# SLUICE_KERNEL_SPLICE=1 (the in-kernel splice: sockhash + sk_skb verdict),
# for the kernel against user-space row.
# CPU per request (KEY.cpu) is the CPU time (user + system, /proc/PID/stat
# or the exit rusage of `sluice run`) the proxy process used over the run,
# divided by the requests the upstream counted.
# The load generators of b, c, d, g and i run INSIDE `sluice run` (real
# cgroup, real eBPF redirect, real resolver and proxy), as a user runs them.
#
# Environment: SLUICE (binary, default bin/sluice), BENCH_OUT (JSON, default
# /tmp/sluice-bench-results.json), BENCH_MD (Markdown table, default
# BENCH_OUT with .md), BENCH_ROUNDS (3), BENCH_DURATION (seconds per load
# run, 4), BENCH_CONCURRENCY (hey -c, 50), BENCH_BULK_BYTES (1073741824),
# BENCH_LATENCY_REQUESTS (2000), BENCH_IDLE_WAIT (10), BENCH_MICRO (1: also run micro.sh; 0
# skips), BENCH_PROFILE (set: perf profile of row c), BENCH_ONLY (regex of
# series keys to measure, for debugging), BENCH_KEEP (set: keep the work
# directory with the peers' logs and the raw measurements).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" -eq 0 ] || { echo "make bench needs root (sandboxes are real cgroups with eBPF)" >&2; exit 1; }
SLUICE=${SLUICE:-bin/sluice}
OUT=${BENCH_OUT:-/tmp/sluice-bench-results.json}
MD=${BENCH_MD:-${OUT%.json}.md}
ROUNDS=${BENCH_ROUNDS:-3}
DUR=${BENCH_DURATION:-4}
CONC=${BENCH_CONCURRENCY:-50}
BULK=${BENCH_BULK_BYTES:-1073741824}
LAT_N=${BENCH_LATENCY_REQUESTS:-2000}
start_ts=$(date +%s)

scripts/bench/deps.sh || echo "bench: scripts/bench/deps.sh failed; rows that need a missing tool read n/a" >&2
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
log() { printf '[%4ds] %s\n' "$(($(date +%s) - start_ts))" "$*" >&2; }

work=$(mktemp -d /tmp/sluice-bench.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	# Safety net: anything still running from the work directory is ours.
	local left
	left=$(pgrep -f -- "$work/" || true)
	if [ -n "$left" ]; then
		echo "bench: stopping leftover processes: $left" >&2
		# shellcheck disable=SC2086
		kill $left 2>/dev/null || true
	fi
	if [ -n "${BENCH_KEEP:-}" ]; then echo "bench: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building the benchmark tools"
mkdir -p "$work/bin"
go build -o "$work/bin/" ./scripts/bench/connect ./scripts/bench/origin ./scripts/bench/probe ./scripts/bench/report
B=$work/bin
M=$work/measurements
: >"$M"
rec() { echo "$*" >>"$M"; } # KEY VALUE... (VALUE "na" + reason marks a gap)

sluice_ok=1
[ -x "$SLUICE" ] || { sluice_ok=; log "no $SLUICE: sluice rows read n/a (run make build)"; }

# --- loopback world: HTTPS upstream, authoritative DNS, header counter ---
BENCH_TOKEN="bench-$RANDOM$RANDOM$RANDOM"
export BENCH_TOKEN
"$B/origin" -dir "$work" &
origin_pid=$!
pids+=($!)
for _ in $(seq 200); do [ -f "$work/env" ] && break; sleep 0.05; done
[ -f "$work/env" ] || { echo "bench: the loopback upstream did not start" >&2; exit 1; }
# shellcheck disable=SC1091
. "$work/env"
printf '127.0.0.1 localhost\n127.0.0.1 api.bench.test splice.bench.test\n' >"$work/hosts"
API=https://api.bench.test:$UP_PORT
SPLICE=https://splice.bench.test:$UP_PORT

# ns runs a command outside any sandbox with the test names in its own
# /etc/hosts (a private mount namespace; the machine's file is untouched).
ns() { unshare -m --propagation private sh -c 'mount --bind "$0" /etc/hosts && exec "$@"' "$work/hosts" "$@"; }

cat >"$work/bench.yaml" <<POL
version: 1
rules:
  - name: bench-intercept
    hosts: [api.bench.test]
    headers:
      - {name: Authorization, type: secret, value: "Bearer {BENCH_TOKEN}"}
  - name: bench-splice
    hosts: [splice.bench.test]
# Row g measures the resolver's throughput, not the per-sandbox DNS fence.
limits: {dns_qps: 1048576}
POL
# --user root: the load generators and their files live in root's work
# directory (the sandbox boundary still applies).
SL=("$SLUICE" run --no-summary --policy "$work/bench.yaml" --dns-upstream "$DNS_ADDR" --dns-allow-loopback
	--upstream-ca "$UP_CA" --secret-env BENCH_TOKEN --user root --)
sl() { "${SL[@]}" "$@"; }
# sl_kernel: sl with the in-kernel splice (sockhash), for the b/i rows.
sl_kernel() { SLUICE_KERNEL_SPLICE=1 "${SL[@]}" "$@"; }
# The same with every decision written to an audit file (issue 8: audit on
# must stay within 10% of audit off).
SLA=("${SL[@]:0:${#SL[@]}-1}" --audit "$work/audit.jsonl" --)

wait_tcp() { # port: wait until something accepts on 127.0.0.1:port
	for _ in $(seq 150); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}

# --- peers ---
squid_port= squid_pid= mitm_pid=
if have squid && [ -x /usr/lib/squid/security_file_certgen ]; then
	log "starting squid (ssl-bump, request_header_add)"
	squid_port=$("$B/probe" freeport)
	mkdir -p "$work/squid"
	squid_log=none
	[ -n "${BENCH_KEEP:-}" ] && squid_log="stdio:$work/squid/access.log"
	cp "$PEER_CA" "$PEER_KEY" "$work/squid/"
	/usr/lib/squid/security_file_certgen -c -s "$work/squid/ssldb" -M 16MB >/dev/null
	cat >"$work/squid/squid.conf" <<CONF
http_port 127.0.0.1:$squid_port ssl-bump tls-cert=$work/squid/peer-ca.pem tls-key=$work/squid/peer-ca.key generate-host-certificates=on dynamic_cert_mem_cache_size=16MB
sslcrtd_program /usr/lib/squid/security_file_certgen -s $work/squid/ssldb -M 16MB
sslcrtd_children 4 startup=1 idle=1
ssl_bump bump all
tls_outgoing_options cafile=$UP_CA
request_header_add Authorization "Bearer $BENCH_TOKEN" all
http_access allow all
cache deny all
access_log $squid_log
cache_log $work/squid/cache.log
pid_filename $work/squid/squid.pid
coredump_dir $work/squid
hosts_file $work/hosts
dns_nameservers 127.0.0.1
visible_hostname sluice-bench
pinger_enable off
workers 1
shutdown_lifetime 1 seconds
CONF
	chown -R proxy:proxy "$work/squid" 2>/dev/null || true
	chmod 600 "$work/squid/peer-ca.key"
	squid -N -f "$work/squid/squid.conf" >"$work/squid/out" 2>&1 &
	squid_pid=$!
	pids+=($!)
	wait_tcp "$squid_port" || { log "squid did not start: $(tail -n 3 "$work/squid/out" "$work/squid/cache.log" 2>/dev/null)"; squid_port=; }
fi

mitm_port=
if have mitmdump; then
	log "starting mitmproxy (mitmdump with a header addon)"
	mitm_port=$("$B/probe" freeport)
	mkdir -p "$work/mitm"
	cat >"$work/mitm/addheader.py" <<'PY'
import os

TOKEN = "Bearer " + os.environ["BENCH_TOKEN"]


def request(flow):
    flow.request.headers["Authorization"] = TOKEN
PY
	# exec: $! must be mitmdump itself, not a shell around it.
	(exec unshare -m --propagation private sh -c 'mount --bind "$0" /etc/hosts && exec "$@"' "$work/hosts" \
		mitmdump -q --listen-host 127.0.0.1 --listen-port "$mitm_port" --set confdir="$work/mitm" \
		--set ssl_verify_upstream_trusted_ca="$UP_CA" --set flow_detail=0 --set termlog_verbosity=error \
		-s "$work/mitm/addheader.py" >"$work/mitm/out" 2>&1) &
	mitm_pid=$!
	pids+=($!)
	wait_tcp "$mitm_port" || { log "mitmproxy did not start: $(tail -n 3 "$work/mitm/out")"; mitm_port=; }
fi

dnsmasq_port=
if have dnsmasq; then
	log "starting dnsmasq (forwarder with cache)"
	dnsmasq_port=$("$B/probe" freeport)
	dnsmasq --keep-in-foreground --conf-file=/dev/null --port="$dnsmasq_port" --listen-address=127.0.0.1 \
		--bind-interfaces --no-resolv --no-hosts --no-poll --server="${DNS_ADDR/:/#}" --cache-size=10000 \
		--user=root --group=root --pid-file= >"$work/dnsmasq.out" 2>&1 &
	pids+=($!)
	wait_tcp "$dnsmasq_port" || { log "dnsmasq did not start: $(tail -n 3 "$work/dnsmasq.out")"; dnsmasq_port=; }
fi
unbound_port=
if have unbound; then
	log "starting unbound (caching forwarder, $(nproc) threads)"
	unbound_port=$("$B/probe" freeport)
	mkdir -p "$work/unbound"
	cat >"$work/unbound/unbound.conf" <<CONF
server:
	interface: 127.0.0.1
	port: $unbound_port
	do-ip6: no
	num-threads: $(nproc)
	so-reuseport: yes
	username: ""
	chroot: ""
	directory: "$work/unbound"
	pidfile: ""
	use-syslog: no
	logfile: ""
	verbosity: 0
	access-control: 127.0.0.0/8 allow
	do-not-query-localhost: no
	module-config: "iterator"
	qname-minimisation: no
	msg-cache-size: 16m
	rrset-cache-size: 32m
remote-control:
	control-enable: no
forward-zone:
	name: "."
	forward-addr: ${DNS_ADDR%:*}@${DNS_ADDR##*:}
CONF
	unbound -d -c "$work/unbound/unbound.conf" >"$work/unbound.out" 2>&1 &
	pids+=($!)
	wait_tcp "$unbound_port" || { log "unbound did not start: $(tail -n 3 "$work/unbound.out")"; unbound_port=; }
fi
printf 'api.bench.test A\n' >"$work/queries"

# --- h: connect() server and its policy (direct CIDR rule, no proxy) ---
"$B/connect" -serve 127.0.0.1:0 >"$work/connect.addr" &
pids+=($!)
for _ in $(seq 50); do [ -s "$work/connect.addr" ] && break; sleep 0.05; done
connect_addr=$(cat "$work/connect.addr")
cat >"$work/direct.yaml" <<POL
version: 1
rules:
  - name: bench-direct
    cidrs: [127.0.0.1/32]
    ports: [${connect_addr##*:}]
    direct: true
POL

# --- measurements ---
stats() { curl -s --noproxy '*' --max-time 5 "http://$STATS_ADDR/" | sed -E 's/.*"injected":([0-9]+).*"total":([0-9]+).*/\2 \1/'; }

# proc_cpu PID: CPU seconds (user + system) the process has used so far.
clk_tck=$(getconf CLK_TCK)
proc_cpu() { sed -E 's/.*\) //' "/proc/$1/stat" 2>/dev/null | awk -v hz="$clk_tck" '{ printf "%.3f", ($12 + $13) / hz }'; }
cpu_file() { cat "$1" 2>/dev/null || echo 0; }

# hey_row KEY MODE -- HEY-ARGS: one hey run (-z DUR -c CONC); records req/s,
# failed requests, the share of upstream requests that carried the header,
# and CPU microseconds per request: KEY.cpu is the proxy's (sluice: its own
# process, start-up subtracted; squid, mitmproxy: their process), or for
# direct the client's plus the upstream's; KEY.cpu_client,
# KEY.cpu_upstream and KEY.cpu_total (all three) are kept in the JSON series.
# MODE: direct (outside, test names in /etc/hosts), sluice (hey inside
# `sluice run`), squid or mitm (hey outside with -x).
hey_row() {
	local key=$1 mode=$2
	shift 3
	local before after out parsed up0 up1 px0= px1= cmd=()
	local hey=("$B/probe" cputime "$work/cpu.client" hey -z "${DUR}s" -c "$CONC")
	rm -f "$work/cpu.client" "$work/cpu.outer"
	case $mode in
	direct) cmd=(ns "${hey[@]}") ;;
	sluice) cmd=("$B/probe" cputime "$work/cpu.outer" "${SL[@]}" "${hey[@]}") ;;
	sluice-kernel) cmd=("$B/probe" cputime "$work/cpu.outer" env SLUICE_KERNEL_SPLICE=1 "${SL[@]}" "${hey[@]}") ;;
	sluice-classical) cmd=("$B/probe" cputime "$work/cpu.outer" env SLUICE_SANDBOX_CLASSICAL_KEX=1 "${SL[@]}" "${hey[@]}") ;;
	sluice-audit) cmd=("${SLA[@]}" "${hey[@]}") ;;
	squid) cmd=("${hey[@]}") px0=$(proc_cpu "$squid_pid") ;;
	mitm) cmd=("${hey[@]}") px0=$(proc_cpu "$mitm_pid") ;;
	esac
	before=$(stats)
	up0=$(proc_cpu "$origin_pid")
	out=$("${cmd[@]}" "$@" 2>&1) || true
	up1=$(proc_cpu "$origin_pid")
	after=$(stats)
	case $mode in
	squid) px1=$(proc_cpu "$squid_pid") ;;
	mitm) px1=$(proc_cpu "$mitm_pid") ;;
	esac
	parsed=$(awk '
		/Requests\/sec:/ { rps = $2 }
		/^Status code distribution:/ { sec = "s"; next }
		/^Error distribution:/ { sec = "e"; next }
		sec == "s" && /^ *\[[0-9]+\]/ { c = $1; gsub(/[][]/, "", c); if (c != 200) bad += $2 }
		sec == "e" && /^ *\[[0-9]+\]/ { n = $1; gsub(/[][]/, "", n); bad += n }
		END { printf "%s %d\n", (rps == "" ? "na" : rps), bad }' <<<"$out")
	if [ "${parsed%% *}" = na ]; then
		rec "$key" na "hey failed: $(tail -n 1 <<<"$out")"
		return 0
	fi
	rec "$key" "${parsed%% *}"
	rec "$key.err" "${parsed##* }"
	read -r t0 i0 <<<"$before"
	read -r t1 i1 <<<"$after"
	local n=$((t1 - t0))
	[ "$n" -gt 0 ] || return 0
	rec "$key.inj" "$(awk -v i="$((i1 - i0))" -v t="$n" 'BEGIN { printf "%.4f", i / t }')"
	local client upstream proxy=
	client=$(cpu_file "$work/cpu.client")
	upstream=$(awk -v a="$up0" -v b="$up1" 'BEGIN { print b - a }')
	case $mode in
	sluice | sluice-kernel | sluice-classical) proxy=$(awk -v o="$(cpu_file "$work/cpu.outer")" -v c="$client" -v s="$sl_startup" 'BEGIN { print o - c - s }') ;;
	squid | mitm) proxy=$(awk -v a="$px0" -v b="$px1" 'BEGIN { print b - a }') ;;
	esac
	us() { awk -v c="$1" -v n="$n" 'BEGIN { printf "%.1f", 1e6 * c / n }'; }
	rec "$key.cpu_client" "$(us "$client")"
	rec "$key.cpu_upstream" "$(us "$upstream")"
	# KEY.cpu_total: the CPU of every process of the row per request, the
	# figure that bounds req/s when they share the machine's cores (the
	# report's "ceiling" rows). sluice-audit does not measure its proxy.
	if [ -n "$proxy" ]; then
		rec "$key.cpu" "$(us "$proxy")"
		rec "$key.cpu_total" "$(us "$(awk -v a="$client" -v b="$upstream" -v p="$proxy" 'BEGIN { print a + b + p }')")"
	elif [ "$mode" = direct ]; then
		rec "$key.cpu" "$(us "$(awk -v a="$client" -v b="$upstream" 'BEGIN { print a + b }')")"
		rec "$key.cpu_total" "$(us "$(awk -v a="$client" -v b="$upstream" 'BEGIN { print a + b }')")"
	fi
	return 0
}

# json_field NAME: the number of "NAME": in the JSON on stdin.
json_field() { sed -nE "s/.*\"$1\":([0-9.eE+-]+).*/\\1/p"; }

lat_row() { # KEY RUNNER... -- PROBE-ARGS
	local key=$1
	shift
	local runner=()
	while [ "$1" != "--" ]; do runner+=("$1"); shift; done
	shift
	local out
	if out=$("${runner[@]}" "$B/probe" latency -n "$LAT_N" "$@" 2>&1); then
		rec "$key.p50" "$(json_field p50_us <<<"$out")"
		rec "$key.p99" "$(json_field p99_us <<<"$out")"
	else
		rec "$key.p50" na "probe failed: $(tail -n 1 <<<"$out")"
		rec "$key.p99" na "probe failed"
	fi
}

bulk_row() { # KEY RUNNER... -- PROBE-ARGS
	local key=$1
	shift
	local runner=()
	while [ "$1" != "--" ]; do runner+=("$1"); shift; done
	shift
	local out bytes
	if out=$("${runner[@]}" "$B/probe" bulk "$@" 2>&1) && bytes=$(json_field bytes <<<"$out") && [ "$bytes" = "$BULK" ]; then
		rec "$key" "$(json_field bytes_per_sec <<<"$out" | awk '{ printf "%.1f", $1 / 1e6 }')"
	else
		rec "$key" na "bulk failed: $(tail -n 1 <<<"$out")"
	fi
}

dns_row() { # KEY SERVER PORT RUNNER...
	local key=$1 server=$2 port=$3
	shift 3
	local out qps
	if have dnsperf; then
		out=$("$@" dnsperf -s "$server" -p "$port" -d "$work/queries" -l "$DUR" -Q 10000000 2>&1) || true
		qps=$(awk '/Queries per second:/ { print $4 }' <<<"$out")
		rec "$key.err" "$(awk '/Queries lost:/ { print $3 }' <<<"$out")"
	else
		out=$("$@" "$B/probe" dns -d "${DUR}s" "$server:$port" 2>&1) || true
		qps=$(json_field qps <<<"$out")
		rec "$key.err" "$(json_field failed <<<"$out")"
	fi
	if [ -n "$qps" ]; then rec "$key" "$qps"; else rec "$key" na "dns load failed: $(tail -n 1 <<<"$out")"; fi
}

connect_row() { # KEY RUNNER...
	local key=$1
	shift
	local out
	if out=$("$@" "$B/connect" -n 5000 -rounds 5 "$connect_addr" 2>&1); then
		rec "$key" "$(json_field ns_per_connect <<<"$out")"
	else
		rec "$key" na "connect failed: $(tail -n 1 <<<"$out")"
	fi
}


sl_h() { "$SLUICE" run --no-summary --policy "$work/direct.yaml" --dns-upstream 127.0.0.1:1 --user root -- "$@"; }

# sl_startup: CPU seconds `sluice run -- true` costs (load and attach the
# programs, make a CA, tear down); subtracted from the sluice rows' CPU.
sl_startup=0
if [ -n "$sluice_ok" ]; then
	for _ in 1 2 3; do
		"$B/probe" cputime "$work/cpu.startup" "${SL[@]}" true >/dev/null 2>&1 && cat "$work/cpu.startup"
	done >"$work/startup.txt"
	sl_startup=$(sort -n "$work/startup.txt" | awk '{ v[NR] = $1 } END { print (NR ? v[int((NR + 1) / 2)] : 0) }')
	log "sluice run start-up and tear-down: ${sl_startup}s CPU (subtracted from the sluice rows' CPU per request)"
fi

# want KEY: is this series selected (BENCH_ONLY, an extended regex over
# series keys such as "^(a|e)\." for debugging; default all)?
want() { [[ $1 =~ ${BENCH_ONLY:-.} ]]; }
# need KEY TOOL-VALUE REASON: want KEY, and TOOL-VALUE is set (else n/a).
need() {
	want "$1" || return 1
	if [ -z "$2" ]; then
		case $1 in
		*.lat) rec "$1.p50" na "$3" && rec "$1.p99" na "$3" ;;
		*) rec "$1" na "$3" ;;
		esac
		return 1
	fi
}
hey_ok=; have hey && hey_ok=1

# hey 0.1.4 sends the Host header, port included, as the TLS server name
# ("api.bench.test:PORT"); sluice refuses a ClientHello with such a name, so
# the direct and sluice rows pass -host NAME (server name and Host without
# the port; the upstream ignores Host). The explicit-proxy rows keep the
# port in Host, which squid and mitmproxy use to build the upstream URL.
# busy: percent of the machine's CPU time that was not idle over one second,
# taken before each round while the benchmark itself is quiet. Anything
# well above zero is other work competing with the measurement.
busy() {
	local a b
	a=$(awk '/^cpu / { print $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
	sleep 1
	b=$(awk '/^cpu / { print $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
	awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); t = y[1] - x[1]; i = y[2] - x[2]; printf "%.1f", (t > 0 ? 100 * (t - i) / t : 0) }'
}

for round in $(seq "$ROUNDS"); do
	# On a shared machine, wait a little (BENCH_IDLE_WAIT samples of one
	# second, default 10) for other work to calm down below 25% busy.
	b=$(busy)
	for _ in $(seq "${BENCH_IDLE_WAIT:-10}"); do
		awk -v b="$b" 'BEGIN { exit !(b < 25) }' && break
		b=$(busy)
	done
	rec noise.busy "$b"
	# Latency first, while the machine is at its quietest.
	log "round $round/$ROUNDS: machine ${b}% busy before the round (other work); c latency (one client, $LAT_N sequential keep-alive requests)"
	want a.lat && lat_row a.lat -- -resolve api.bench.test:127.0.0.1 -cacert "$UP_CA" "$API/"
	need c.lat "$sluice_ok" "sluice not built" && lat_row c.lat sl -- "$API/"

	log "round $round/$ROUNDS: a-f HTTPS load (hey -z ${DUR}s -c $CONC)"
	need a.ka "$hey_ok" "hey not available" && hey_row a.ka direct -- -host api.bench.test "$API/"
	need b.ka "${hey_ok:+$sluice_ok}" "hey or sluice not available" && hey_row b.ka sluice -- -host splice.bench.test "$SPLICE/"
	need b.kernel "${hey_ok:+$sluice_ok}" "hey or sluice not available" && hey_row b.kernel sluice-kernel -- -host splice.bench.test "$SPLICE/"
	need c.ka "${hey_ok:+$sluice_ok}" "hey or sluice not available" && hey_row c.ka sluice -- -host api.bench.test "$API/"
	need e.ka "${hey_ok:+$squid_port}" "hey or squid-openssl not available" &&
		hey_row e.ka squid -- -x "http://127.0.0.1:$squid_port" "$API/"
	# CPU per request depends on the load (a busier process handles more
	# requests per wake-up), so compare squid and sluice also at one offered
	# load both can carry: 60% of what squid managed in this round (hey -q
	# is per worker; under one request per second per worker: not measured).
	eq_q=$(awk '$1 == "e.ka" && $2 != "na" { v = $2 } END { q = int(0.6 * v / '"$CONC"'); if (q >= 1) print q }' "$M")
	need c.eq "${hey_ok:+${squid_port:+$eq_q}}" "hey, squid-openssl or this round's e.ka missing" &&
		hey_row c.eq sluice -- -q "$eq_q" -host api.bench.test "$API/"
	need e.eq "${hey_ok:+${squid_port:+$eq_q}}" "hey, squid-openssl or this round's e.ka missing" &&
		hey_row e.eq squid -- -q "$eq_q" -x "http://127.0.0.1:$squid_port" "$API/"
	need f.ka "${hey_ok:+$mitm_port}" "hey or mitmproxy not available" &&
		hey_row f.ka mitm -- -x "http://127.0.0.1:$mitm_port" "$API/"
	# HTTP/2 end to end (informational; hey -h2 multiplexes on one connection per worker)
	need a.h2 "$hey_ok" "hey not available" && hey_row a.h2 direct -- -h2 -host api.bench.test "$API/"
	need c.audit "${hey_ok:+$sluice_ok}" "hey or sluice not available" && hey_row c.audit sluice-audit -- -host api.bench.test "$API/" && rm -f "$work/audit.jsonl"*
	need c.h2 "${hey_ok:+$sluice_ok}" "hey or sluice not available" && hey_row c.h2 sluice -- -h2 -host api.bench.test "$API/"
	need a.nc "$hey_ok" "hey not available" && hey_row a.nc direct -- -disable-keepalive -host api.bench.test "$API/"
	need d.nc "${hey_ok:+$sluice_ok}" "hey or sluice not available" &&
		hey_row d.nc sluice -- -disable-keepalive -host api.bench.test "$API/"
	# The same with the key exchange squid's OpenSSL 3.0 can do (no ML-KEM):
	# the like-for-like CPU comparison of a new connection (issue #21).
	need d.nc.classical "${hey_ok:+$sluice_ok}" "hey or sluice not available" &&
		hey_row d.nc.classical sluice-classical -- -disable-keepalive -host api.bench.test "$API/"
	need e.nc "${hey_ok:+$squid_port}" "hey or squid-openssl not available" &&
		hey_row e.nc squid -- -x "http://127.0.0.1:$squid_port" -disable-keepalive "$API/"
	need f.nc "${hey_ok:+$mitm_port}" "hey or mitmproxy not available" &&
		hey_row f.nc mitm -- -x "http://127.0.0.1:$mitm_port" -disable-keepalive "$API/"

	log "round $round/$ROUNDS: i bulk $BULK bytes"
	want i.direct && bulk_row i.direct -- -resolve api.bench.test:127.0.0.1 -cacert "$UP_CA" "$API/bulk?n=$BULK"
	# splice passes the upstream's own certificate through: trust its CA
	need i.splice "$sluice_ok" "sluice not built" && bulk_row i.splice sl -- -cacert "$UP_CA" "$SPLICE/bulk?n=$BULK"
	need i.splice.kernel "$sluice_ok" "sluice not built" &&
		bulk_row i.splice.kernel sl_kernel -- -cacert "$UP_CA" "$SPLICE/bulk?n=$BULK"
	need i.intercept "$sluice_ok" "sluice not built" && bulk_row i.intercept sl -- "$API/bulk?n=$BULK"

	log "round $round/$ROUNDS: g DNS cached answers (${DUR}s each)"
	need g.sluice "$sluice_ok" "sluice not built" && dns_row g.sluice 127.0.0.1 53 sl
	need g.peer "$dnsmasq_port" "dnsmasq not available" && dns_row g.peer 127.0.0.1 "$dnsmasq_port" env
	need g.unbound "$unbound_port" "unbound not available" && dns_row g.unbound 127.0.0.1 "$unbound_port" env

	log "round $round/$ROUNDS: h connect()"
	want h.outside && connect_row h.outside env
	need h.inside "$sluice_ok" "sluice not built" && connect_row h.inside sl_h
done

# Optional: a system-wide profile of row c (BENCH_PROFILE=1, needs perf):
# which processes used the CPU, and where sluice spent it.
if [ -n "${BENCH_PROFILE:-}" ] && have perf && [ -n "$sluice_ok" ] && [ -n "$hey_ok" ]; then
	log "profiling row c with perf (${DUR}s)"
	prof=${OUT%.json}-profile.txt
	sl hey -z "$((DUR + 2))s" -c "$CONC" -host api.bench.test "$API/" >"$work/prof-hey.out" 2>&1 &
	prof_pid=$!
	sleep 1
	perf record -q -a -g -F 499 -o "$work/perf.data" -- sleep "$DUR" >/dev/null 2>&1 || true
	wait "$prof_pid" || true
	{
		echo "== row c under perf: $(grep 'Requests/sec' "$work/prof-hey.out" | tr -s ' \t' ' ')"
		echo "== CPU samples by process (whole machine)"
		perf report -i "$work/perf.data" --sort comm --stdio --no-children -g none 2>/dev/null | grep -E '^ +[0-9.]+%' | head -n 15 || true
		echo "== sluice: cumulative share of sluice's own samples by function (top 60)"
		perf report -i "$work/perf.data" --comm sluice,exe --percentage relative --sort sym --stdio --children -g none 2>/dev/null |
			grep -E '^ +[0-9.]+% +[0-9.]+%' | head -n 60 || true
	} >"$prof"
	sed -n '1,18p' "$prof"
	echo "full profile: $prof"
fi

log "measured; writing $OUT and $MD"
ver() { "$@" 2>&1 | head -n 1 | tr -d '\n' | tr -s ' ' || true; }
mkdir -p "$(dirname "$OUT")" "$(dirname "$MD")"
bulk_label="$BULK bytes"
[ "$BULK" = 1073741824 ] && bulk_label="1 GiB"
"$B/report" -in "$M" -json "$OUT" -md "$MD" -bulk "$bulk_label" \
	-machine "cpus=$(nproc)" \
	-machine "kernel=$(uname -r)" \
	-machine "cpu=$(sed -nE 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)" \
	-machine "memory=$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)" \
	-setup "command=make bench (scripts/bench/run.sh)" \
	-setup "rounds=$ROUNDS (median), interleaved" \
	-setup "load=hey -z ${DUR}s -c $CONC, HTTP/1.1, 3-byte body; latency: $LAT_N sequential requests, one client; bulk: $BULK bytes, one GET" \
	-setup "sluice=$(ver "$SLUICE" version)" \
	-setup "tools=$(dpkg-query -W -f '${Package} ${Version}, ' hey squid-openssl mitmproxy dnsmasq-base unbound dnsperf 2>/dev/null | sed 's/, $//')" \
	-setup "go=$(go env GOVERSION)" \
	-setup "duration=$(($(date +%s) - start_ts)) s"
echo "results written to $OUT and $MD"

if [ "${BENCH_MICRO:-1}" = 1 ]; then
	echo
	echo "== Go micro-benchmarks (scripts/bench/micro.sh; BENCH_MICRO=0 skips)"
	BENCHTIME=${BENCH_MICRO_TIME:-100ms} MICRO_OUT=${OUT%.json}-micro.txt scripts/bench/micro.sh |
		sed -n '/^== hot paths/,$p' || echo "bench: micro-benchmarks failed (see ${OUT%.json}-micro.txt)"
fi
