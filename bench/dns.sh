#!/usr/bin/env bash
# DNS server load (issue 19): dnsperf against `stampgate run` with a
# [dns_server] section, the server on one core, and the same load against
# NSD (a C authoritative server) as the reference for what this machine and
# this load generator allow.
#
# Three simulated stamps on 127.0.0.2, .3 and .4 (healthy, so answers are
# the weighted set, drawn in a new order per response), stampgate (default
# runtime; the DNS server has its own thread) pinned to core $DNS_CPU,
# dnsperf pinned to core $LOAD_CPU. Two measurements per query mix:
#
#   max    dnsperf with many queries outstanding: the most one core answers;
#          also as answers per second of the server's own CPU time
#          (q/cpu-sec), which a shared machine disturbs far less than the
#          wall-clock rate
#   rate   dnsperf at a fixed $RATE queries/s with every query's latency
#          logged (-v); p50/p99/p99.9 are computed here from those lines.
#          Repeated $REPEAT times: one run's p99 moves with what else the
#          two cores did in those seconds, so every run is shown
#
# Query mixes: "a" is catalog.example.com A only (3 addresses per answer);
# "mix" adds AAAA (NODATA), SOA, NS and an unknown name (NXDOMAIN).
# The rate limit is off for the main rows (dnsperf is one client network);
# a last row runs "max" with it on at a limit never reached, to show what
# counting costs. When `nsd` is installed (Debian: nsd), the "rate" rows
# are run again against NSD 4 serving the same answers from a zone file,
# pinned the same way, with its rate limit off.
#
#   bench/dns.sh             # 10 s per run, about three minutes
#   bench/dns.sh --quick     # 3 s per run, one rate run: a smoke test
#
# Environment: DNS_CPU (default 1), LOAD_CPU (default 0; both take taskset
# lists, so DNS_CPU=0,1 LOAD_CPU=0,1 runs unpinned), RATE (default
# 50000), SECS (default 10), REPEAT (default 3), THREADS (stampgate's
# dns_server.threads; default 1, the per-core figure), SG_BIN (a prebuilt
# stampgate binary instead of `cargo build --release`). Every process
# started here is ended by PID on exit; everything listens on loopback.

set -euo pipefail

die() {
    echo "bench/dns.sh: $*" >&2
    exit 1
}

SECS=${SECS:-10}
RATE=${RATE:-50000}
REPEAT=${REPEAT:-3}
THREADS=${THREADS:-1}
DNS_CPU=${DNS_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
while [[ $# -gt 0 ]]; do
    case $1 in
    --quick) SECS=3 REPEAT=1 ;;
    -h | --help)
        sed -n '2,38p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument: $1 (try --help)" ;;
    esac
    shift
done
[[ $SECS =~ ^[0-9]+$ && $SECS -gt 0 ]] || die "SECS must be a positive whole number, not '$SECS'"
[[ $RATE =~ ^[0-9]+$ && $RATE -gt 0 ]] || die "RATE must be a positive whole number, not '$RATE'"
[[ $REPEAT =~ ^[0-9]+$ && $REPEAT -gt 0 ]] || die "REPEAT must be a positive whole number, not '$REPEAT'"
[[ $THREADS =~ ^[0-9]+$ && $THREADS -gt 0 ]] || die "THREADS must be a positive whole number, not '$THREADS'"
command -v dnsperf >/dev/null || die "dnsperf is missing (Debian: apt-get install dnsperf)"
command -v taskset >/dev/null || die "taskset is missing (util-linux)"

cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

if [[ -z ${SG_BIN:-} ]]; then
    cargo build --release --quiet --bin stampgate
    SG_BIN=${CARGO_TARGET_DIR:-target}/release/stampgate
fi
[[ -x $SG_BIN ]] || die "no stampgate binary at $SG_BIN"

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
LOGS_HINT=" (logs in $WORK)"

read -r P1 P2 P3 C1 C2 C3 PROXY ADMIN DNS NSD_PORT <<<"$(free_ports 10)"
for i in 1 2 3; do
    port_var=P$i control_var=C$i
    "$SG_BIN" stamp --name "s$i" --region "r$i" --listen "127.0.0.$((i + 1)):${!port_var}" \
        --control "127.0.0.1:${!control_var}" >"$WORK/stamp$i.log" 2>&1 &
    PIDS+=($!)
done

config() { # config LIMIT
    cat <<EOF
[proxy]
listen = ["127.0.0.1:$PROXY"]
[admin]
listen = "127.0.0.1:$ADMIN"
[access_log]
enabled = false
[[routes]]
name = "catalog"
pool = "backend-apis"
[pools.backend-apis]
method = "weighted"
[[pools.backend-apis.stamps]]
name = "s1"
region = "r1"
address = "127.0.0.2:$P1"
[[pools.backend-apis.stamps]]
name = "s2"
region = "r2"
address = "127.0.0.3:$P2"
[[pools.backend-apis.stamps]]
name = "s3"
region = "r3"
address = "127.0.0.4:$P3"
[dns_server]
listen = ["127.0.0.1:$DNS"]
zone = "example.com."
nameservers = ["ns1.example.com."]
responses_per_second = $1
threads = $THREADS
[[dns_server.records]]
name = "catalog"
pool = "backend-apis"
EOF
}

SERVER_PID=""
start_server() { # start_server LIMIT
    config "$1" >"$WORK/stampgate.toml"
    taskset -c "$DNS_CPU" "$SG_BIN" run --config "$WORK/stampgate.toml" \
        >"$WORK/stampgate.log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    # Ready when all three stamps are in the answer (probes passed).
    await_three "$DNS" "the DNS server"
}
# await_three PORT WHAT: wait until catalog.example.com has three A records.
await_three() {
    for _ in $(seq 1 100); do
        if [[ $(dig +short +time=1 +tries=1 -p "$1" @127.0.0.1 catalog.example.com A 2>/dev/null | wc -l) == 3 ]]; then
            return 0
        fi
        sleep 0.1
    done
    die "$2 did not answer with three addresses$LOGS_HINT"
}
stop_server() {
    kill "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
}

printf 'catalog.example.com A\n' >"$WORK/a.txt"
{
    for _ in 1 2 3 4 5 6; do printf 'catalog.example.com A\n'; done
    printf 'catalog.example.com AAAA\n'
    printf 'example.com SOA\n'
    printf 'example.com NS\n'
    printf 'nope.example.com A\n'
} >"$WORK/mix.txt"

# CPU time the server has used, in clock ticks (utime + stime).
cpu_ticks() {
    awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"
}

# max MIX -> "qps per_cpu_second lost": the wall-clock rate, and queries
# answered per second of the server's own CPU time. The second figure is
# what one core sustains even when the machine is shared: time the server
# waits for a core does not count.
max() {
    local out before after
    before=$(cpu_ticks)
    out=$(timeout $((SECS + 30)) taskset -c "$LOAD_CPU" dnsperf -s 127.0.0.1 -p "$DNS" \
        -d "$WORK/$1.txt" -l "$SECS" -c 8 -q 500 2>&1) || die "dnsperf failed: $out"
    after=$(cpu_ticks)
    local qps lost completed per_cpu
    qps=$(awk '/Queries per second/ {printf "%d", $4}' <<<"$out")
    lost=$(awk '/Queries lost/ {print $3}' <<<"$out")
    completed=$(awk '/Queries completed/ {print $3}' <<<"$out")
    per_cpu=$(awk -v n="$completed" -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" \
        'BEGIN { if (t > 0) printf "%d", n / (t / hz); else print "-" }')
    echo "$qps $per_cpu $lost"
}

# at_rate MIX PORT -> "qps p50_us p99_us p999_us lost"
at_rate() {
    timeout $((SECS + 30)) taskset -c "$LOAD_CPU" dnsperf -s 127.0.0.1 -p "$2" \
        -d "$WORK/$1.txt" -l "$SECS" -c 8 -q 500 -Q "$RATE" -v >"$WORK/rate.out" 2>&1 ||
        die "dnsperf failed: $(tail -5 "$WORK/rate.out")"
    [[ -n ${DNS_BENCH_SAMPLE:-} ]] && grep -m3 '^> ' "$WORK/rate.out" >&2
    # -v: one line per response, "> RCODE ..." with the latency in seconds
    # as its one decimal field; timed-out queries ("T") carry none.
    python3 - "$WORK/rate.out" <<'PY'
import re, sys
lat, qps, lost = [], 0, "?"
for line in open(sys.argv[1]):
    if line.startswith("> "):
        m = re.search(r"\s(\d+\.\d+)(\s|$)", line)
        if m:
            lat.append(float(m.group(1)))
    elif "Queries per second" in line:
        qps = int(float(line.split()[3]))
    elif "Queries lost" in line:
        lost = line.split()[2]
lat.sort()
pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e6 if lat else float("nan")
print(qps, round(pct(0.5)), round(pct(0.99)), round(pct(0.999)), lost)
PY
}

# NSD serving the same zone: the reference. Its default response rate
# limit (200/s per /24) would drop nearly all of dnsperf's queries.
NSD_PID=""
start_nsd() {
    mkdir -p "$WORK/nsd"
    cat >"$WORK/nsd/example.com.zone" <<EOF
\$ORIGIN example.com.
\$TTL 30
@ IN SOA ns1.example.com. hostmaster.example.com. 1 3600 600 1209600 30
@ IN NS ns1.example.com.
catalog IN A 127.0.0.2
catalog IN A 127.0.0.3
catalog IN A 127.0.0.4
EOF
    cat >"$WORK/nsd/nsd.conf" <<EOF
server:
  ip-address: 127.0.0.1@$NSD_PORT
  server-count: 1
  username: ""
  zonesdir: "$WORK/nsd"
  database: ""
  pidfile: "$WORK/nsd/nsd.pid"
  xfrdfile: "$WORK/nsd/xfrd.state"
  zonelistfile: "$WORK/nsd/zone.list"
  logfile: "$WORK/nsd/nsd.log"
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: example.com
  zonefile: example.com.zone
EOF
    taskset -c "$DNS_CPU" nsd -d -c "$WORK/nsd/nsd.conf" >"$WORK/nsd/out.log" 2>&1 &
    NSD_PID=$!
    PIDS+=("$NSD_PID")
    await_three "$NSD_PORT" nsd
}

ROW='%-9s %-4s %-22s %10s %11s %8s %8s %8s %s'
ROWS=()
LOAD_BEFORE=$(cut -d' ' -f1 /proc/loadavg)
# rate_rows SERVER MIX PORT: REPEAT runs at RATE.
rate_rows() {
    local qps p50 p99 p999 lost
    for i in $(seq 1 "$REPEAT"); do
        read -r qps p50 p99 p999 lost <<<"$(at_rate "$2" "$3")"
        ROWS+=("$(printf "$ROW" "$1" "$2" "at $RATE/s #$i" "$qps" - "$p50" "$p99" "$p999" "$lost")")
    done
}
start_server 0
for mix in a mix; do
    read -r qps per_cpu lost <<<"$(max "$mix")"
    ROWS+=("$(printf "$ROW" stampgate "$mix" "max (limit off)" "$qps" "$per_cpu" - - - "$lost")")
    rate_rows stampgate "$mix" "$DNS"
done
stop_server
start_server 1000000000
read -r qps per_cpu lost <<<"$(max a)"
ROWS+=("$(printf "$ROW" stampgate a "max (limit on)" "$qps" "$per_cpu" - - - "$lost")")
stop_server
if command -v nsd >/dev/null; then
    start_nsd
    for mix in a mix; do rate_rows nsd "$mix" "$NSD_PORT"; done
    kill "$NSD_PID"
    wait "$NSD_PID" 2>/dev/null || true
else
    ROWS+=("nsd is not installed (Debian: apt-get install nsd): no reference rows")
fi

echo
echo "DNS servers pinned to core $DNS_CPU (stampgate: $THREADS DNS thread(s)); dnsperf on core $LOAD_CPU; ${SECS}s per run"
echo "load average $LOAD_BEFORE before, $(cut -d' ' -f1 /proc/loadavg) after ($(nproc) cores)"
printf "$ROW\n" server mix run "queries/s" "q/cpu-sec" "p50 us" "p99 us" "p99.9 us" lost
for row in "${ROWS[@]}"; do echo "$row"; done
