#!/usr/bin/env bash
# What the access log costs (issue 5): stampgate in front of one fast nginx
# origin, saturated with wrk, alternating runs with the access log off and
# on (every request logged, JSON, to a file). Reports requests per second
# and requests per proxy CPU-second (the fair figure on a shared machine),
# medians over the rounds, and the on/off ratio.
#
#   bash bench/observability_cost.sh [--rounds N] [--seconds S]
#
# The metrics counters cannot be switched off (they are the relaxed atomics
# the request path bumps anyway), so both rows include them.
#
# Loopback only; stampgate is pinned to core 0 with one worker thread (its
# access-log writer thread shares that core, so its CPU is counted), wrk
# and the origin to core 1; every process started is killed by PID on exit.
set -euo pipefail

ROUNDS=3
SECONDS_PER_RUN=8
while (($#)); do
    case $1 in
        --rounds) ROUNDS=$2; shift ;;
        --seconds) SECONDS_PER_RUN=$2; shift ;;
        *) echo "usage: $0 [--rounds N] [--seconds S]" >&2; exit 2 ;;
    esac
    shift
done

cd "$(dirname "$0")/.."
for tool in nginx wrk taskset; do
    command -v "$tool" >/dev/null || {
        sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
        $sudo apt-get install -y nginx wrk util-linux >/dev/null
    }
done
cargo build --release --quiet
BIN=$PWD/target/release/stampgate
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

ORIGIN=$(free_port)
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log crit;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $WORK/nginx;
    proxy_temp_path $WORK/nginx;
    fastcgi_temp_path $WORK/nginx;
    uwsgi_temp_path $WORK/nginx;
    scgi_temp_path $WORK/nginx;
    server {
        listen 127.0.0.1:$ORIGIN;
        location / { return 200 "hello from the origin, 37 bytes long\n"; }
    }
}
EOF
taskset -c 1 nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
PIDS+=($!)

# CPU ticks (user + system) of a process and its threads.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() { # $1 = true|false (access log)
    local port admin dir=$WORK/sg-$1
    port=$(free_port); admin=$(free_port)
    mkdir -p "$dir"
    cat >"$dir/stampgate.toml" <<EOF
[proxy]
listen = ["127.0.0.1:$port"]

[admin]
listen = "127.0.0.1:$admin"

[access_log]
enabled = $1
path = "$dir/access.log"

[[routes]]
name = "bench"
path_prefix = "/"
pool = "origin"

[pools.origin.probe]
path = "/"

[[pools.origin.stamps]]
name = "origin-1"
region = "local"
address = "127.0.0.1:$ORIGIN"
EOF
    TOKIO_WORKER_THREADS=1 taskset -c 0 "$BIN" --log-level warn run \
        --config "$dir/stampgate.toml" >"$dir/out.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq 50); do
        curl -sf -o /dev/null "http://127.0.0.1:$port/" && break
        sleep 0.1
    done
    local before after rps
    before=$(cpu_ticks "$pid")
    rps=$(timeout $((SECONDS_PER_RUN + 10)) taskset -c 1 wrk -t1 -c64 -d"${SECONDS_PER_RUN}s" \
        "http://127.0.0.1:$port/" | awk '/Requests\/sec/ {print $2}')
    after=$(cpu_ticks "$pid")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    local hz cpu lines
    hz=$(getconf CLK_TCK)
    cpu=$(awk -v a="$after" -v b="$before" -v hz="$hz" 'BEGIN {print (a - b) / hz}')
    lines=$(wc -l <"$dir/access.log" 2>/dev/null || echo 0)
    rm -f "$dir/access.log"
    printf '%s\t%s\t%s\t%s\n' "$1" "$rps" \
        "$(awk -v r="$rps" -v s="$SECONDS_PER_RUN" -v c="$cpu" 'BEGIN {print r * s / c}')" "$lines"
}

echo "# $(date -u +%FT%TZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
RESULTS=$WORK/results.tsv
for r in $(seq "$ROUNDS"); do
    for log in false true; do
        line=$(run "$log")
        echo "round $r: access_log=$line" >&2
        echo "$line" >>"$RESULTS"
    done
done

python3 - "$RESULTS" <<'EOF'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]) if l.strip()]
def med(flag, col):
    return statistics.median(float(r[col]) for r in rows if r[0] == flag)
off_rps, on_rps = med("false", 1), med("true", 1)
off_cpu, on_cpu = med("false", 2), med("true", 2)
print("| access log | requests/s | requests per proxy CPU-second |")
print("| --- | --- | --- |")
print(f"| off | {off_rps:,.0f} | {off_cpu:,.0f} |")
print(f"| on (every request, JSON, to a file) | {on_rps:,.0f} | {on_cpu:,.0f} |")
print(f"| on / off | {on_rps / off_rps:.3f} | {on_cpu / off_cpu:.3f} |")
EOF
