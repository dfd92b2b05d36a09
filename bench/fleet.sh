#!/usr/bin/env bash
# Fleet decision latency: a real etcd (started by the test on free
# loopback ports), three edges in one process, 100 drain/enable decisions
# through rotating edges. Prints, per decision, the admin call's time and
# the time from its answer until every edge's routing table has it
# (p50/p90/p99/max). Needs etcd on PATH (apt-get install -y etcd-server).
# Debug build, like the test suite: release figures are lower.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v etcd >/dev/null || { echo "etcd not found: apt-get install -y etcd-server" >&2; exit 2; }
cargo test -q --test fleet -- --ignored --exact decision_latency_bench --nocapture 2>/dev/null \
    | grep '^|'
