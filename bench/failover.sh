#!/usr/bin/env bash
# Failover benchmark: stampgate against HAProxy, one of three stamps killed
# under a constant open-loop GET load (examples/failover_bench.rs does one
# run; see its header for what is measured and how).
#
#     bash bench/failover.sh [--rate 1000] [--seconds 10] [--kill-at 3]
#
# Builds the example in release, runs stampgate and HAProxy alternately
# (A B A B A B, RUNS=3 each, so drift on a shared machine hits both),
# and prints every run, a table of medians, the 100 ms series after each
# kill and the exact command. Arguments are passed to every run.
# Everything listens on 127.0.0.1; the run in progress is ended by PID on
# exit (HAProxy is the example's child and dies with it).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${RUNS:-3}"
PROXIES=(stampgate haproxy)

# HAProxy is the comparison; jq computes the medians.
missing=()
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v jq >/dev/null 2>&1 || missing+=(jq)
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
HAPROXY="$(command -v haproxy || echo /usr/sbin/haproxy)"

cargo build --release --example failover_bench
target_dir="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)"
bench="$target_dir/release/examples/failover_bench"

out="$(mktemp -d "${TMPDIR:-/tmp}/failover-bench.XXXXXX")"
running=""
cleanup() {
  if [ -n "$running" ] && kill -0 "$running" 2>/dev/null; then
    kill -TERM "$running"
    wait "$running" 2>/dev/null || true
  fi
}
trap cleanup EXIT

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "haproxy: $("$HAPROXY" -v | head -1)"
echo "runs:    $out"
echo

for run in $(seq 1 "$RUNS"); do
  for proxy in "${PROXIES[@]}"; do
    json="$out/$run-$proxy.json"
    echo "run $run $proxy: $bench --proxy $proxy --haproxy $HAPROXY --json $*" >&2
    "$bench" --proxy "$proxy" --haproxy "$HAPROXY" --json "$@" >"$json" 2>"$out/$run-$proxy.log" &
    running=$!
    if ! wait "$running"; then
      echo "run $run $proxy failed:" >&2
      cat "$out/$run-$proxy.log" >&2
      exit 1
    fi
    running=""
  done
done

header='| proxy | time to shift (ms) | last try at dead stamp (ms) | errors after kill | tries at dead stamp | p50 (ms) | p99 (ms) | max (ms) | load generator lag, max (ms) | requests sent |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |'

# One table row from an object with the report's fields; a missing shift
# (never under 1%) is carried as null.
row='def fmt: if . == null then "never" else . end;
  def ms: if . == null then "none" else (. * 10 | round / 10) end;
  "| \(.proxy) | \(.shift_ms | fmt) | \(.last_try_ms | ms) | \(.errors_after_kill) | \(.dead_stamp_tries) | \(.p50_ms | ms) | \(.p99_ms | ms) | \(.max_ms | ms) | \(.max_send_lag_ms | ms) | \(.sent) |"'

echo "### Every run (in the order run)"
echo
echo "$header"
for run in $(seq 1 "$RUNS"); do
  for proxy in "${PROXIES[@]}"; do
    jq -r "$row" "$out/$run-$proxy.json"
  done
done
echo

echo "### Median of $RUNS runs"
echo
echo "$header"
for proxy in "${PROXIES[@]}"; do
  # "never" sorts above every number; a median of "never" stays "never".
  jq -rs "
    def median: sort | if length % 2 == 1 then .[length / 2 | floor]
      else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def never_last: map(if . == null then 1e18 else . end) | median
      | if . >= 1e18 then null else . end;
    {proxy: .[0].proxy,
     shift_ms: (map(.shift_ms) | never_last),
     last_try_ms: (map(.last_try_ms) | never_last),
     errors_after_kill: (map(.errors_after_kill) | median),
     dead_stamp_tries: (map(.dead_stamp_tries) | median),
     p50_ms: (map(.p50_ms) | median),
     p99_ms: (map(.p99_ms) | median),
     max_ms: (map(.max_ms) | median),
     max_send_lag_ms: (map(.max_send_lag_ms) | median),
     sent: (map(.sent) | median)} | $row" "$out"/*-"$proxy".json
done
echo

echo "### After each kill: 100 ms buckets (ms after kill: tries at dead stamp / requests, errors), up to the last bucket with a try or an error"
echo
for run in $(seq 1 "$RUNS"); do
  for proxy in "${PROXIES[@]}"; do
    jq -r '
      [.series[] | select(.t_ms >= 0)] as $s
      | ([$s | to_entries[] | select(.value.dead_stamp_tries > 0 or .value.errors > 0) | .key] | max // 0) as $last
      | "- run \(input_filename | split("/") | last | rtrimstr(".json")): "
        + ([$s[0:$last + 1][] | "\(.t_ms): \(.dead_stamp_tries)/\(.requests)" + (if .errors > 0 then " \(.errors) err" else "" end)] | join(", "))
        + "; proxy said: \(.proxy_event // "nothing")"' "$out/$run-$proxy.json"
  done
done
echo
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "command: bash bench/failover.sh $*"
