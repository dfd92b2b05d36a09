#!/usr/bin/env bash
# Data-path load comparison: stampgate vs HAProxy vs nginx (issue 7).
#
# One fast origin (nginx, small body, no logging), then each proxy in front
# of it with equivalent settings: one route, keep-alive to the origin,
# logging off, one worker thread/process pinned to core $PROXY_CPU while the
# load generator (and the origin) use core $LOAD_CPU. Every measurement is
# repeated in rounds that alternate the proxies (A B C A B C ...); the table
# shows medians and ratios against HAProxy.
#
#   bench/compare.sh            # full run, 3 rounds, about 8 minutes
#   bench/compare.sh --quick    # 1 short round: a smoke test of the script
#   bench/compare.sh --profile  # instructions per request under callgrind
#   bench/compare.sh --idle     # memory per idle keep-alive connection only
#
# --profile replaces the load runs: each proxy runs under valgrind's
# callgrind and serves a fixed number of requests per protocol, and the
# table shows user-space instructions per request (deterministic, unlike
# timings on a shared machine) plus stampgate's hottest functions.
#
# Everything listens on 127.0.0.1 (free ports picked at start), every load
# run is bounded by `timeout`, and every process started here is ended by
# PID on exit. Method, results and caveats: bench/PERF.md.

set -euo pipefail

usage() {
    cat <<'EOF'
usage: bench/compare.sh [--quick] [--rounds N] [--profile | --idle] [--only PROXY] [--pgo]
                        [--same-headers | --no-added-headers] [--raw FILE] [--keep]

  --quick      one short round (3 s runs, 1,000 held connections): smoke test
  --rounds N   rounds of every load test (default 3)
  --profile    callgrind instead of load runs: instructions per request
  --idle       no load runs: each proxy serves a short warm-up, then holds
               the idle keep-alive connections; prints RSS per held
               connection (about a minute; issue 17's measure)
  --only PROXY with --profile or --idle: only stampgate, haproxy or nginx
               (a quicker before/after check of one proxy)
  --same-headers
               HAProxy and nginx also do the header work stampgate does by
               default: X-Forwarded-For/-Proto/-Host, Via, X-Request-Id made
               when absent and echoed on the response, and the serving
               stamp's name on the response (by default they add nothing)
  --no-added-headers
               equal work the other way: stampgate adds no headers either
               (proxy.forwarded_headers, request_id and stamp_header off)
  --pgo        measure the profile-guided release build (bench/pgo.sh,
               about 9 more minutes the first time) instead of the plain one
  --raw FILE   also write every per-run measurement (TSV) to FILE
  --keep       keep the temporary directory (configs, logs, profiles)

Environment: PROXY_CPU (default 0), LOAD_CPU (default 1), CARGO_TARGET_DIR,
PROFILE_REQUESTS (default 20000), CALLGRIND_ARGS (extra callgrind options),
SG_BIN (a prebuilt stampgate binary to measure instead of building one).
EOF
}

ROUNDS=3
QUICK=0
PROFILE=0
IDLE=0
ONLY=""
RAW_OUT=""
KEEP=0
SAME_HEADERS=0
NO_ADDED_HEADERS=0
PGO=0
while (($#)); do
    case $1 in
        --quick) QUICK=1; ROUNDS=1 ;;
        --rounds) ROUNDS=$2; shift ;;
        --profile) PROFILE=1 ;;
        --idle) IDLE=1 ;;
        --only) ONLY=$2; shift ;;
        --raw) RAW_OUT=$2; shift ;;
        --keep) KEEP=1 ;;
        --pgo) PGO=1 ;;
        --same-headers) SAME_HEADERS=1 ;;
        --no-added-headers) NO_ADDED_HEADERS=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
    shift
done
((SAME_HEADERS && NO_ADDED_HEADERS)) && { usage >&2; exit 2; }
((PROFILE && IDLE)) && { usage >&2; exit 2; }
[[ -n ${SG_BIN:-} ]] && ((PGO)) && { echo "--pgo and SG_BIN exclude each other" >&2; exit 2; }

# Durations in seconds: saturated HTTP/1.1, fixed-rate latency, h2c, TLS
# keep-alive, TLS handshakes, idle-connection hold.
if ((QUICK)); then
    D_H1=3 D_LAT=3 D_H2=3 D_TLS=3 D_HS=2 D_HOLD=3 HOLD_CONNS=1000
else
    D_H1=10 D_LAT=10 D_H2=8 D_TLS=8 D_HS=5 D_HOLD=10 HOLD_CONNS=10000
fi
CONNS=64                 # wrk / h2load client connections
H2_STREAMS=10            # h2load concurrent streams per connection
LAT_RATE=5000            # total req/s for the latency run ...
LAT_CLIENTS=50           # ... spread over this many connections
PROFILE_REQUESTS=${PROFILE_REQUESTS:-20000}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PROXIES=(stampgate haproxy nginx)
if [[ -n $ONLY ]]; then
    [[ " ${PROXIES[*]} " == *" $ONLY "* ]] || { usage >&2; exit 2; }
    PROXIES=("$ONLY")
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
log() { printf '[compare %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---- tools ------------------------------------------------------------------

install_missing() {
    local missing=() pair cmd pkg
    local needed=(haproxy:haproxy nginx:nginx wrk:wrk h2load:nghttp2-client
        openssl:openssl python3:python3 taskset:util-linux curl:curl pgrep:procps)
    ((PROFILE)) && needed+=(valgrind:valgrind)
    for pair in "${needed[@]}"; do
        cmd=${pair%%:*} pkg=${pair#*:}
        command -v "$cmd" >/dev/null || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    log "installing: ${missing[*]}"
    local sudo=""
    ((EUID == 0)) || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${missing[@]}"
}

# ---- processes --------------------------------------------------------------

WORK=$(mktemp -d /tmp/stampgate-compare.XXXXXX)
STARTED=()   # PIDs of every long-running process started here
LOAD_PID=""  # the load generator or connection holder running now, if any

cleanup() {
    local pid
    if [[ -n $LOAD_PID ]]; then kill -TERM "$LOAD_PID" 2>/dev/null || true; fi
    for pid in "${STARTED[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED[@]}"; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
        wait "$pid" 2>/dev/null || true
    done
    if ((KEEP)); then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The process and its direct children (nginx: master + worker).
proc_tree() {
    echo "$1"
    pgrep -P "$1" || true
}

# utime + stime of a process tree, in clock ticks.
cpu_ticks() {
    local total=0 pid t
    for pid in $(proc_tree "$1"); do
        # Fields after "pid (comm) ": utime and stime are the 12th and 13th.
        t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2>/dev/null) || t=0
        total=$((total + ${t:-0}))
    done
    echo "$total"
}

# VmRSS of a process tree, in KiB (summed over processes: shared pages of
# nginx's master and worker are counted twice, a few MB at most).
rss_kib() {
    local total=0 pid r
    for pid in $(proc_tree "$1"); do
        r=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null) || r=0
        total=$((total + ${r:-0}))
    done
    echo "$total"
}

# free_ports, wait_ok, make_cert
# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"
LOGS_HINT="; logs in $WORK (use --keep)"
# valgrind starts slowly.
WAIT_TRIES=100
((PROFILE)) && WAIT_TRIES=600

mib() { python3 -c "print(f'{$1 / 1024:.1f}')"; }

# ---- configs and starts -----------------------------------------------------

declare -A PID H1 H2C TLS
# Prefix for the proxies' command lines: valgrind in --profile mode.
WRAP=()

# nginx needs writable paths for its pid, logs and temp files.
nginx_prelude() {
    local dir=$1
    mkdir -p "$dir/tmp"
    echo "daemon off;"
    echo "pid $dir/nginx.pid;"
    echo "error_log $dir/error.log warn;"
    echo "worker_rlimit_nofile $PROXY_NOFILE;"
    if ((EUID == 0)); then echo "user root;"; fi
}
nginx_temp_paths() {
    local dir=$1 t
    for t in client_body proxy fastcgi uwsgi scgi; do
        echo "    ${t}_temp_path $dir/tmp/$t;"
    done
}

start_origin() {
    local dir=$WORK/origin
    mkdir -p "$dir"
    {
        nginx_prelude "$dir"
        cat <<EOF
master_process off;
events { worker_connections 4096; }
http {
    access_log off;
$(nginx_temp_paths "$dir")
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server {
        listen 127.0.0.1:$P_ORIGIN;
        location / {
            default_type text/plain;
            return 200 "stampgate bench origin: a small body\n";
        }
    }
}
EOF
    } >"$dir/nginx.conf"
    taskset -c "$LOAD_CPU" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" &
    PID[origin]=$!
    STARTED+=("${PID[origin]}")
    wait_ok "http://127.0.0.1:$P_ORIGIN/" origin "$WAIT_TRIES"
}

# TLS URLs use the name "localhost" (in the certificate): an IP address is
# not a legal SNI name, and rustls logs a warning for every such handshake,
# which would put stampgate's log writes into the handshake figure.
start_stampgate() {
    local dir=$WORK/stampgate
    mkdir -p "$dir"
    cat >"$dir/stampgate.toml" <<EOF
[proxy]
listen = ["127.0.0.1:$P_SG"]
tls_listen = ["127.0.0.1:$P_SG_TLS"]
$( ((NO_ADDED_HEADERS)) && printf '%s\n' \
    '# --no-added-headers: as little header work as HAProxy and nginx do.' \
    'forwarded_headers = false' 'request_id = false' 'stamp_header = false')

[[proxy.certificates]]
server_names = ["localhost"]
cert = "$WORK/tls/cert.pem"
key = "$WORK/tls/key.pem"

[admin]
listen = "127.0.0.1:$P_SG_ADMIN"

# Off like the other proxies' logs; SG_ACCESS_LOG=true measures its cost.
[access_log]
enabled = ${SG_ACCESS_LOG:-false}
path = "$dir/access.log"

[[routes]]
name = "bench"
path_prefix = "/"
pool = "origin"

[pools.origin]
method = "weighted"

[pools.origin.probe]
path = "/"
$( ((PROFILE)) && printf '%s\n' \
    '# valgrind slows everything ~50x: keep probes from timing out.' \
    'interval = "10s"' 'timeout = "5s"')

[[pools.origin.stamps]]
name = "origin-1"
region = "local"
address = "127.0.0.1:$P_ORIGIN"
EOF
    # tokio's runtime builder reads TOKIO_WORKER_THREADS (and without it
    # would size itself from the affinity mask taskset sets): one worker.
    # SG_ARGS: extra global flags, e.g. SG_ARGS="--runtime current-thread".
    # shellcheck disable=SC2086
    TOKIO_WORKER_THREADS=1 taskset -c "$PROXY_CPU" "${WRAP[@]}" "$SG_BIN" ${SG_ARGS:-} \
        --log-level warn run --config "$dir/stampgate.toml" >"$dir/out.log" 2>&1 &
    PID[stampgate]=$!
    STARTED+=("${PID[stampgate]}")
    H1[stampgate]=http://127.0.0.1:$P_SG/
    H2C[stampgate]=http://127.0.0.1:$P_SG/
    TLS[stampgate]=https://localhost:$P_SG_TLS/
}

start_haproxy() {
    local dir=$WORK/haproxy
    mkdir -p "$dir"
    # No `log` line anywhere: logging off. A plain `bind` in HTTP mode also
    # accepts HTTP/2 with prior knowledge (h2c), like stampgate's listener.
    # HAProxy sizes its FD needs as 2 x maxconn, more than the hard limit
    # allows here, and by default refuses to start. Idle clients hold no
    # server connection (http-reuse), so cap FDs at the limit, start anyway
    # (no strict-limits) and let maxconn exceed the held connections.
    cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread 1
    no strict-limits
    ulimit-n $PROXY_NOFILE
    maxconn $HA_MAXCONN

defaults
    mode http
    option http-keep-alive
    http-reuse always
    maxconn $HA_MAXCONN
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 60s

frontend bench
    bind 127.0.0.1:$P_HA
    bind 127.0.0.1:$P_HA_TLS ssl crt $WORK/tls/combined.pem alpn h2,http/1.1
$(haproxy_same_headers)
    default_backend origin

backend origin
    option httpchk GET /
    server origin-1 127.0.0.1:$P_ORIGIN check inter 1s
EOF
    taskset -c "$PROXY_CPU" "${WRAP[@]}" haproxy -db -f "$dir/haproxy.cfg" \
        >"$dir/out.log" 2>&1 &
    PID[haproxy]=$!
    STARTED+=("${PID[haproxy]}")
    H1[haproxy]=http://127.0.0.1:$P_HA/
    H2C[haproxy]=http://127.0.0.1:$P_HA/
    TLS[haproxy]=https://localhost:$P_HA_TLS/
}

# --same-headers: HAProxy does what stampgate's header rules do by default
# (proxy::headers): X-Forwarded-For/-Proto/-Host and Via on the request, an
# X-Request-Id made when the client sent none and echoed on the response,
# and the serving server's name on the response.
haproxy_same_headers() {
    ((SAME_HEADERS)) || return 0
    cat <<'EOF'
    option forwardfor
    http-request set-header X-Forwarded-Proto https if { ssl_fc }
    http-request set-header X-Forwarded-Proto http unless { ssl_fc }
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request add-header Via "1.1 stampgate"
    unique-id-format %[uuid()]
    http-request set-header X-Request-Id %[unique-id] unless { req.hdr(x-request-id) -m found }
    http-request set-var(txn.rid) req.hdr(x-request-id)
    http-response set-header X-Request-Id %[var(txn.rid)]
    http-response set-header x-stampgate-stamp %s
EOF
}

# The same for nginx ($request_id is its random 32-hex id).
nginx_same_headers() {
    ((SAME_HEADERS)) || return 0
    cat <<'EOF'
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header Via "1.1 stampgate";
            proxy_set_header X-Request-Id $rid;
            add_header X-Request-Id $rid;
            add_header x-stampgate-stamp origin-1;
EOF
}

nginx_same_headers_map() {
    ((SAME_HEADERS)) || return 0
    cat <<'EOF'
    map $http_x_request_id $rid {
        default $http_x_request_id;
        "" $request_id;
    }
EOF
}

start_nginx() {
    local dir=$WORK/nginx master=on
    # Under valgrind the one process that serves must be the one started.
    ((PROFILE)) && master=off
    mkdir -p "$dir"
    # nginx 1.22 serves h2c only on a port of its own (`listen ... http2`
    # without ssl speaks nothing else), hence the third listener.
    {
        nginx_prelude "$dir"
        cat <<EOF
master_process $master;
worker_processes 1;
events { worker_connections $NOFILE_CONNS; }
http {
    access_log off;
$(nginx_temp_paths "$dir")
    keepalive_requests 10000000;
    keepalive_timeout 60s;
$(nginx_same_headers_map)
    upstream origin {
        server 127.0.0.1:$P_ORIGIN;
        keepalive 64;
        keepalive_requests 10000000;
        keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:$P_NG;
        listen 127.0.0.1:$P_NG_H2C http2;
        listen 127.0.0.1:$P_NG_TLS ssl http2;
        # nginx 1.22 leaves TLS 1.3 out by default; the others negotiate it.
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate $WORK/tls/cert.pem;
        ssl_certificate_key $WORK/tls/key.pem;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
$(nginx_same_headers)
        }
    }
}
EOF
    } >"$dir/nginx.conf"
    taskset -c "$PROXY_CPU" "${WRAP[@]}" nginx -p "$dir" -e "$dir/error.log" \
        -c "$dir/nginx.conf" >"$dir/out.log" 2>&1 &
    PID[nginx]=$!
    STARTED+=("${PID[nginx]}")
    H1[nginx]=http://127.0.0.1:$P_NG/
    H2C[nginx]=http://127.0.0.1:$P_NG_H2C/
    TLS[nginx]=https://localhost:$P_NG_TLS/
}

# ---- measurements -----------------------------------------------------------

RESULTS=$WORK/results.tsv   # metric <TAB> proxy <TAB> round <TAB> value
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"; }

# "requests rps errors" from wrk's text output.
parse_wrk() {
    awk '
        / requests in / { reqs = $1 }
        /^Requests\/sec:/ { rps = $2 }
        /Non-2xx or 3xx responses:/ { errs += $NF }
        /Socket errors:/ { gsub(/,/, ""); errs += $4 + $6 + $8 + $10 }
        END { print reqs + 0, rps + 0, errs + 0 }' "$1"
}

# "requests rps errors" from h2load's text output (2xx responses only).
parse_h2load() {
    awk '
        /^finished in/ { gsub(/,/, ""); rps = $4 }
        /^requests:/ { gsub(/,/, ""); errs += $10 }
        /^status codes:/ { gsub(/,/, ""); two = $3; errs += $7 + $9 }
        END { print two + 0, rps + 0, errs + 0 }' "$1"
}

# run_load PROXY ROUND TEST TOOL DURATION ARGS...: runs the load generator on
# LOAD_CPU, brackets it with the proxy's CPU ticks, records requests/s,
# requests per proxy CPU-second, the proxy's CPU use and errors.
run_load() {
    local proxy=$1 round=$2 test=$3 tool=$4 dur=$5
    shift 5
    local pid=${PID[$proxy]} out=$WORK/run-$test-$proxy-$round.txt
    local c0 c1 w0 w1 peak=0 r load reqs rps errs
    c0=$(cpu_ticks "$pid")
    w0=$(date +%s.%N)
    timeout $((dur + 30)) taskset -c "$LOAD_CPU" "$tool" "$@" >"$out" 2>&1 &
    load=$!
    LOAD_PID=$load
    # Peak RSS while loaded, sampled twice a second.
    while kill -0 "$load" 2>/dev/null; do
        r=$(rss_kib "$pid")
        ((r > peak)) && peak=$r
        sleep 0.5
    done
    wait "$load" || log "$tool exited non-zero for $proxy/$test"
    LOAD_PID=""
    w1=$(date +%s.%N)
    c1=$(cpu_ticks "$pid")
    read -r reqs rps errs < <(parse_"$tool" "$out")
    local v_rps v_per_cpu v_cores
    read -r v_rps v_per_cpu v_cores < <(per_cpu "$reqs" "$rps" $((c1 - c0)) "$w0" "$w1")
    record "$test.rps" "$proxy" "$round" "$v_rps"
    record "$test.per_cpu_s" "$proxy" "$round" "$v_per_cpu"
    record "$test.proxy_cores" "$proxy" "$round" "$v_cores"
    record "$test.errors" "$proxy" "$round" "$errs"
    [[ $test == h1 ]] && record "rss.load_mib" "$proxy" "$round" "$(mib "$peak")"
    log "$test $proxy r$round: $v_rps req/s, $v_per_cpu req/CPU-s, proxy $v_cores cores, errors $errs"
    ((errs == 0)) || sed -n '1,30p' "$out" >&2
}

# per_cpu REQUESTS RPS TICKS WALL0 WALL1 -> "rps requests-per-CPU-s cores"
per_cpu() {
    python3 - "$@" "$CLK_TCK" <<'EOF'
import sys
reqs, rps, ticks, w0, w1, hz = sys.argv[1:]
cpu = int(ticks) / int(hz)
per = float(reqs) / cpu if cpu else 0
print(f"{float(rps):.0f} {per:.0f} {cpu / (float(w1) - float(w0)):.2f}")
EOF
}

# Latency at a fixed rate below saturation. h2load --rps paces each of
# LAT_CLIENTS HTTP/1.1 connections at LAT_RATE/LAT_CLIENTS req/s with one
# request in flight per connection; its per-request log gives percentiles.
# It is open loop only while responses are faster than the 10 ms pacing
# interval: a late response delays that connection's next request, whose
# latency is then counted from when it was sent (coordinated omission).
# The proxy's CPU over the run gives its cost at equal load.
run_latency() {
    local proxy=$1 round=$2 url=$3
    local logf=$WORK/lat-$proxy-$round.log c0 c1 w0 w1
    c0=$(cpu_ticks "${PID[$proxy]}")
    w0=$(date +%s.%N)
    timeout $((D_LAT + 30)) taskset -c "$LOAD_CPU" h2load --h1 -t1 \
        -c "$LAT_CLIENTS" --rps $((LAT_RATE / LAT_CLIENTS)) -D "$D_LAT" \
        --log-file="$logf" "$url" >"$logf.out" 2>&1 || true
    w1=$(date +%s.%N)
    c1=$(cpu_ticks "${PID[$proxy]}")
    local n p50 p99 p999 bad rate per cores
    read -r n p50 p99 p999 bad < <(python3 - "$logf" <<'EOF'
import sys
lat, bad = [], 0
for line in open(sys.argv[1]):
    f = line.split("\t")
    if len(f) < 3:
        continue
    if f[1] != "200":
        bad += 1
    lat.append(int(f[2]) / 1000)
lat.sort()
pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else 0
print(len(lat), f"{pct(0.50):.3f}", f"{pct(0.99):.3f}", f"{pct(0.999):.3f}", bad)
EOF
    )
    read -r rate per cores < <(per_cpu "$n" "$(python3 -c "print($n / $D_LAT)")" \
        $((c1 - c0)) "$w0" "$w1")
    record lat.p50_ms "$proxy" "$round" "$p50"
    record lat.p99_ms "$proxy" "$round" "$p99"
    record lat.p999_ms "$proxy" "$round" "$p999"
    record lat.achieved_rps "$proxy" "$round" "$rate"
    record lat.per_cpu_s "$proxy" "$round" "$per"
    record lat.proxy_cores "$proxy" "$round" "$cores"
    record lat.errors "$proxy" "$round" "$bad"
    log "lat $proxy r$round: $rate req/s, p50 $p50 ms, p99 $p99 ms, p99.9 $p999 ms, proxy $cores cores, non-200 $bad"
}

# Idle keep-alive connections: peak RSS while HOLD_CONNS of them are held
# (sampling starts when all are open), and how many the proxy closed. With
# --idle, also RSS per held connection: the growth over the RSS just
# before, divided by the connections opened. Not after the load runs:
# memory they freed is reused by the held connections without growing
# the RSS, so the figure would read too low.
run_hold() {
    local proxy=$1 pid=${PID[$1]} out=$WORK/hold-$1.txt peak=0 r holder before
    local port=${H1[$proxy]##*:}
    before=$(rss_kib "$pid")
    taskset -c "$LOAD_CPU" python3 "$BENCH/hold_conns.py" --port "${port%/}" \
        --conns "$HOLD_CONNS" --hold "$D_HOLD" >"$out" 2>&1 &
    holder=$!
    LOAD_PID=$holder
    for _ in $(seq 1 600); do
        # The holder may not have created its output file yet.
        grep -q '^READY' "$out" 2>/dev/null && break
        kill -0 "$holder" 2>/dev/null || break
        sleep 0.1
    done
    while kill -0 "$holder" 2>/dev/null; do
        r=$(rss_kib "$pid")
        ((r > peak)) && peak=$r
        sleep 0.5
    done
    wait "$holder" || true
    LOAD_PID=""
    local done_line opened closed
    done_line=$(grep '^DONE' "$out" || echo "DONE opened=0 failed=$HOLD_CONNS closed_by_peer=0")
    opened=$(sed -E 's/.*opened=([0-9]+).*/\1/' <<<"$done_line")
    closed=$(sed -E 's/.*closed_by_peer=([0-9]+).*/\1/' <<<"$done_line")
    local per_conn
    per_conn=$(python3 -c "print(f'{($peak - $before) / max($opened, 1):.2f}')")
    record rss.held_mib "$proxy" 1 "$(mib "$peak")"
    ((IDLE)) && record held.kib_per_conn "$proxy" 1 "$per_conn"
    record held.opened "$proxy" 1 "$opened"
    record held.closed "$proxy" 1 "$closed"
    log "hold $proxy: $done_line, RSS $(mib "$before") MiB before, peak $(mib "$peak") MiB: $per_conn KiB per connection"
}

# The origin and the proxies in PROXIES (--only), each answering.
start_selected() {
    start_origin
    local p
    for p in "${PROXIES[@]}"; do
        "start_$p"
    done
    for p in "${PROXIES[@]}"; do
        wait_ok "${H1[$p]}" "$p" "$WAIT_TRIES"
    done
}

# --idle: only the hold, after a warm-up that leaves each proxy as a used
# one is (its upstream connections open, its allocator's pools warm), so
# that the growth measured is the held connections' own.
run_idle() {
    start_selected
    local p
    for p in "${PROXIES[@]}"; do
        timeout 60 taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d2s "${H1[$p]}" >/dev/null 2>&1 ||
            log "warm-up of $p failed"
    done
    printf 'idle: %s connections held %ss after one GET each, after a 2 s wrk warm-up\n' \
        "$HOLD_CONNS" "$D_HOLD" >>"$WORK/header.txt"
    cat "$WORK/header.txt" >&2
    sleep 2
    hold_and_report --idle "$RESULTS" "$HOLD_CONNS"
}

# The idle-connection hold on each proxy in turn, then the header and the
# table: summarize.py's arguments are this function's.
hold_and_report() {
    local p
    for p in "${PROXIES[@]}"; do
        run_hold "$p"
        sleep 1
    done
    echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$WORK/header.txt"
    [[ -n $RAW_OUT ]] && cp "$RESULTS" "$RAW_OUT"
    echo
    cat "$WORK/header.txt"
    echo
    python3 "$BENCH/summarize.py" "$@"
}

# ---- profile mode -----------------------------------------------------------

# callgrind's dump files of PID, one per line.
dumps() {
    local f
    for f in "$WORK"/callgrind."$1".out.*; do
        [[ -e $f ]] && echo "$f"
    done
    return 0
}

# Zero callgrind's counters, send PROFILE_REQUESTS requests, dump, and
# record user-space instructions per request.
profile_run() {
    local proxy=$1 test=$2
    shift 2
    local pid=${PID[$proxy]} before after file ir
    timeout 300 taskset -c "$LOAD_CPU" h2load -t1 -c "$CONNS" -n 2000 "$@" >/dev/null 2>&1 || true
    callgrind_control -z "$pid" >/dev/null 2>&1
    timeout 900 taskset -c "$LOAD_CPU" h2load -t1 -c "$CONNS" -n "$PROFILE_REQUESTS" "$@" \
        >"$WORK/prof-$test-$proxy.txt" 2>&1 || true
    before=$(dumps "$pid" | wc -l)
    callgrind_control -d "$pid" >/dev/null 2>&1
    for _ in $(seq 1 100); do
        after=$(dumps "$pid" | wc -l)
        ((after > before)) && break
        sleep 0.2
    done
    file=$(dumps "$pid" | sort -V | tail -1)
    sleep 0.5   # let the dump finish writing
    ir=$(awk '/^(summary|totals):/ { print $2; exit }' "$file")
    local ok
    read -r ok _ _ < <(parse_h2load "$WORK/prof-$test-$proxy.txt")
    record "ir.$test" "$proxy" 1 $((ir / (ok > 0 ? ok : 1)))
    log "profile $test $proxy: $ok requests, $((ir / (ok > 0 ? ok : 1))) instructions per request"
    [[ $proxy == stampgate && $test == h1 ]] && SG_H1_PROFILE=$file
    return 0
}

run_profile() {
    # CALLGRIND_ARGS: extra options, e.g. "--cache-sim=yes" for cache misses.
    # shellcheck disable=SC2206
    WRAP=(valgrind --tool=callgrind "--callgrind-out-file=$WORK/callgrind.%p.out" ${CALLGRIND_ARGS:-})
    start_selected
    local p
    for p in "${PROXIES[@]}"; do
        profile_run "$p" h1 --h1 "${H1[$p]}"
        profile_run "$p" h2c -m "$H2_STREAMS" "${H2C[$p]}"
        profile_run "$p" tls --h1 "${TLS[$p]}"
    done
    cat "$WORK/header.txt"
    echo "profile: callgrind, $PROFILE_REQUESTS requests per protocol after 2,000 warm-up" \
        "requests, $CONNS connections (TLS: $CONNS full handshakes included)"
    echo
    python3 "$BENCH/summarize.py" --profile "$RESULTS"
    echo
    [[ -n ${SG_H1_PROFILE:-} ]] || return 0
    echo "stampgate, HTTP/1.1: hottest functions (self instructions):"
    echo
    callgrind_annotate --inclusive=no --threshold=100 --show=Ir "$SG_H1_PROFILE" 2>/dev/null |
        python3 "$BENCH/summarize.py" --top "$PROFILE_REQUESTS"
}

# ---- main -------------------------------------------------------------------

install_missing
CPUS=$(nproc)
if ((CPUS < 2)); then
    log "warning: 1 CPU: proxy and load generator share core 0"
    PROXY_CPU=0 LOAD_CPU=0
fi
CLK_TCK=$(getconf CLK_TCK)
# Room for HOLD_CONNS client sockets in the holder and as many in a proxy.
NOFILE=$(ulimit -Hn)
[[ $NOFILE == unlimited ]] && NOFILE=1048576
ulimit -n "$NOFILE"
NOFILE_CONNS=$((NOFILE - 1000))
# What HAProxy and nginx may ask for; valgrind keeps a few descriptors of
# the limit for itself.
PROXY_NOFILE=$NOFILE
((PROFILE)) && PROXY_NOFILE=$((NOFILE - 64))
HA_MAXCONN=$((HOLD_CONNS + 2000))
# Under valgrind HAProxy refuses a maxconn beyond its FD limit; profile runs
# hold no idle connections.
((PROFILE)) && HA_MAXCONN=4000
((NOFILE_CONNS > HOLD_CONNS)) || log "warning: ulimit -n $NOFILE is too low for $HOLD_CONNS connections"

if [[ -n ${SG_BIN:-} ]]; then
    log "using the prebuilt stampgate at $SG_BIN"
elif ((PGO)); then
    log "building stampgate (release, profile-guided: bench/pgo.sh)"
    SG_BIN=$(bash "$BENCH/pgo.sh" | tail -1)
else
    log "building stampgate (release)"
    (cd "$ROOT" && cargo build --release --quiet)
    SG_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/stampgate
fi
[[ -x $SG_BIN ]] || die "no binary at $SG_BIN"

read -r P_ORIGIN P_SG P_SG_TLS P_SG_ADMIN P_HA P_HA_TLS P_NG P_NG_H2C P_NG_TLS < <(free_ports 9)
make_cert "$WORK/tls"
: >"$RESULTS"

cpu_model=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)
memory=$(awk '/MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo)
versions=(
    # The binary names its own commit and build kind: the tree's HEAD
    # would mislabel a prebuilt SG_BIN.
    "$("$SG_BIN" --version)"
    "$(haproxy -v | head -1 | cut -d' ' -f1,3)"
    "$(nginx -v 2>&1 | cut -d' ' -f3)"
    "wrk $(wrk -v 2>&1 | head -1 | cut -d' ' -f2)"
    "h2load $(h2load --version | cut -d' ' -f2)"
)
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "machine: $CPUS CPUs, $cpu_model, $memory, kernel $(uname -r)"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    printf 'versions: %s' "${versions[0]}"
    printf ', %s' "${versions[@]:1}"
    echo
    echo "pinning: proxy on CPU $PROXY_CPU; load generator and origin on CPU $LOAD_CPU"
    if ((SAME_HEADERS)); then
        echo "headers: HAProxy and nginx add stampgate's default headers too (--same-headers)"
    elif ((NO_ADDED_HEADERS)); then
        echo "headers: none of the proxies adds any (--no-added-headers)"
    else
        echo "headers: stampgate adds its default headers; HAProxy and nginx add none"
    fi
} >"$WORK/header.txt"

if ((PROFILE)); then
    run_profile
    exit 0
fi
if ((IDLE)); then
    run_idle
    exit 0
fi

printf 'rounds: %s; h1 %ss, latency %ss at %s req/s, h2c %ss, TLS %ss, handshakes %ss, hold %s conns %ss\n' \
    "$ROUNDS" "$D_H1" "$D_LAT" "$LAT_RATE" "$D_H2" "$D_TLS" "$D_HS" "$HOLD_CONNS" "$D_HOLD" \
    >>"$WORK/header.txt"
cat "$WORK/header.txt" >&2

start_origin
start_stampgate
start_haproxy
start_nginx
for p in "${PROXIES[@]}"; do
    wait_ok "${H1[$p]}" "$p" "$WAIT_TRIES"
    wait_ok "${TLS[$p]}" "$p (TLS)" "$WAIT_TRIES"
done
# h2c prior knowledge must really work on each proxy's h2c URL.
for p in "${PROXIES[@]}"; do
    h2load -n 10 -c 1 "${H2C[$p]}" 2>&1 | grep -q '10 succeeded' ||
        die "$p does not serve h2c at ${H2C[$p]}"
done
# --same-headers must really be in effect: every proxy echoes a request id.
if ((SAME_HEADERS)); then
    for p in "${PROXIES[@]}"; do
        curl -s -o /dev/null -D - "${H1[$p]}" | grep -qi '^x-request-id: .' ||
            die "$p answers without X-Request-Id under --same-headers"
    done
fi
# --no-added-headers must really be in effect: stampgate adds no request id.
if ((NO_ADDED_HEADERS)); then
    curl -s -o /dev/null -D - "${H1[stampgate]}" | grep -qi '^x-request-id:' &&
        die "stampgate adds X-Request-Id under --no-added-headers"
fi
# The TLS each proxy negotiates with wrk's OpenSSL client.
for p in "${PROXIES[@]}"; do
    hostport=${TLS[$p]#https://}
    tls=$(openssl s_client -connect "${hostport%/}" -servername localhost </dev/null 2>/dev/null |
        awk -F': *' '/^New,/ { print $0 } /Server Temp Key/ { print $2 }' | tr '\n' ' ')
    echo "TLS $p: $tls" >>"$WORK/header.txt"
done
workers=$(cat /proc/"${PID[stampgate]}"/task/*/comm | grep -c '^tokio-rt-worker' || true)
threads=$(ls /proc/"${PID[stampgate]}"/task | wc -l)
echo "stampgate threads: $workers tokio worker(s), $threads in all" >>"$WORK/header.txt"
log "stampgate: $workers tokio worker thread(s), $threads threads in all"

# Idle RSS after the first probes have run, before any load.
sleep 3
for p in "${PROXIES[@]}"; do
    record rss.idle_mib "$p" 1 "$(mib "$(rss_kib "${PID[$p]}")")"
done

# Reference: the origin straight from the load generator's core, i.e. the
# ceiling the shared core allows (wrk + origin on LOAD_CPU).
run_load origin 1 h1 wrk "$D_H1" -t1 -c"$CONNS" -d"${D_H1}s" "http://127.0.0.1:$P_ORIGIN/"
run_latency origin 1 "http://127.0.0.1:$P_ORIGIN/"

for round in $(seq 1 "$ROUNDS"); do
    log "round $round of $ROUNDS"
    for p in "${PROXIES[@]}"; do
        run_load "$p" "$round" h1 wrk "$D_H1" -t1 -c"$CONNS" -d"${D_H1}s" "${H1[$p]}"
    done
    for p in "${PROXIES[@]}"; do
        run_latency "$p" "$round" "${H1[$p]}"
    done
    for p in "${PROXIES[@]}"; do
        run_load "$p" "$round" h2c h2load "$D_H2" -t1 -c"$CONNS" -m"$H2_STREAMS" -D"$D_H2" "${H2C[$p]}"
    done
    for p in "${PROXIES[@]}"; do
        run_load "$p" "$round" tls wrk "$D_TLS" -t1 -c"$CONNS" -d"${D_TLS}s" "${TLS[$p]}"
    done
    for p in "${PROXIES[@]}"; do
        run_load "$p" "$round" handshake wrk "$D_HS" -t1 -c"$CONNS" -d"${D_HS}s" \
            -H 'Connection: close' "${TLS[$p]}"
    done
done

# Let the handshake runs' TIME_WAIT sockets age a little, then hold.
sleep 2
hold_and_report "$RESULTS" "$HOLD_CONNS"
