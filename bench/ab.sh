#!/usr/bin/env bash
# Side-by-side A/B of stampgate binaries against HAProxy on one machine,
# for comparing builds: the configs of a kept `compare.sh` run, proxies
# pinned as in compare.sh (proxy on core 0; wrk, h2load and the origin on
# core 1), rounds alternating, every stampgate started afresh each round.
#
#   bash bench/compare.sh --quick --keep          # once: configs in /tmp/stampgate-compare.*
#   bash bench/ab.sh cpu WORKDIR BIN...           # requests per proxy CPU-second (wrk -c64)
#   bash bench/ab.sh p99 WORKDIR BIN...           # p50/p99/p99.9 at 5,000 req/s (h2load)
#
# ROUNDS (default 4) and DUR (cpu: seconds per run, default 8) tune it.
# Loopback only; every process started here is ended by PID.
set -euo pipefail

mode=${1:?usage: bench/ab.sh cpu|p99 WORKDIR BIN...}
work=${2:?usage: bench/ab.sh cpu|p99 WORKDIR BIN...}
shift 2
bins=("$@")
[ ${#bins[@]} -gt 0 ] || { echo "no stampgate binary given" >&2; exit 2; }
rounds=${ROUNDS:-4}
dur=${DUR:-8}
out=$(mktemp -d /tmp/stampgate-ab.XXXXXX)

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

port_of() { grep -o "$2" "$1" | head -1 | grep -o '[0-9]*$'; }
sg_port=$(port_of "$work/stampgate/stampgate.toml" '127.0.0.1:[0-9]*')
hp_port=$(port_of "$work/haproxy/haproxy.cfg" 'bind 127.0.0.1:[0-9]*')
# utime and stime of PID, in clock ticks (100 per second).
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12, $13 }' "/proc/$1/stat"; }

taskset -c 1 nginx -c "$work/origin/nginx.conf" & pids+=($!)
taskset -c 0 haproxy -f "$work/haproxy/haproxy.cfg" >"$out/haproxy.log" 2>&1 & hp=$!
pids+=("$hp")
sleep 1

# measure NAME PID PORT ROUND
measure() {
    local name=$1 pid=$2 port=$3 round=$4
    if [ "$mode" = cpu ]; then
        timeout 20 taskset -c 1 wrk -t1 -c64 -d2s "http://127.0.0.1:$port/" >/dev/null 2>&1 || true
        local u0 s0 u1 s1 req
        read -r u0 s0 < <(cpu_ticks "$pid")
        req=$(timeout $((dur + 20)) taskset -c 1 wrk -t1 -c64 -d"${dur}s" "http://127.0.0.1:$port/" |
            awk '/requests in/ {print $1}')
        read -r u1 s1 < <(cpu_ticks "$pid")
        awk -v n="$name" -v r="$round" -v q="$req" -v u=$((u1 - u0)) -v s=$((s1 - s0)) 'BEGIN {
            printf "%s round %s: %d requests, %d per proxy CPU-second, user %.2f us, kernel %.2f us per request\n",
                n, r, q, q * 100 / (u + s), u * 1e4 / q, s * 1e4 / q }'
    else
        # The proxy's CPU at the fixed rate too: what a change costs when
        # requests do not arrive in bunches.
        local u0 s0 u1 s1 req
        read -r u0 s0 < <(cpu_ticks "$pid")
        req=$(timeout 40 taskset -c 1 h2load --h1 -t1 -c 50 --rps 100 -D 10 \
            --log-file="$out/$name-$round.log" "http://127.0.0.1:$port/" 2>/dev/null |
            awk '/^requests:/ {print $8}') || true
        read -r u1 s1 < <(cpu_ticks "$pid")
        awk -v n="$name" -v r="$round" -v q="${req:-0}" -v u=$((u1 - u0)) -v s=$((s1 - s0)) 'BEGIN {
            if (q > 0) printf "%s round %s: %d requests at 5,000/s, user %.2f us, kernel %.2f us per request\n",
                n, r, q, u * 1e4 / q, s * 1e4 / q }'
    fi
}

for r in $(seq "$rounds"); do
    for i in "${!bins[@]}"; do
        TOKIO_WORKER_THREADS=1 taskset -c 0 "${bins[$i]}" --log-level warn run \
            --config "$work/stampgate/stampgate.toml" >"$out/sg-$i.log" 2>&1 &
        sg=$!
        pids+=("$sg")
        sleep 1.5
        measure "sg$i" "$sg" "$sg_port" "$r"
        kill "$sg"
        wait "$sg" 2>/dev/null || true
    done
    measure haproxy "$hp" "$hp_port" "$r"
done

if [ "$mode" = p99 ]; then
    for name in $(seq 0 $((${#bins[@]} - 1)) | sed 's/^/sg/') haproxy; do
        python3 - "$name" "$out/$name"-*.log <<'PY'
import sys
name, files = sys.argv[1], sys.argv[2:]
per, pooled = [], []
for f in files:
    lat = sorted(int(l.split("\t")[2]) / 1000 for l in open(f) if len(l.split("\t")) >= 3)
    per.append(lat[int(0.99 * len(lat))])
    pooled += lat
pooled.sort()
q = lambda p: pooled[min(len(pooled) - 1, int(p * len(pooled)))]
print(f"{name}: p99 per round (ms) " + " ".join(f"{x:.2f}" for x in per)
      + f" | pooled n={len(pooled)} p50={q(.5):.2f} p99={q(.99):.2f} p99.9={q(.999):.2f}")
PY
    done
fi
for i in "${!bins[@]}"; do echo "sg$i = ${bins[$i]}"; done
