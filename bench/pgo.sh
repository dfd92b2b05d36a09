#!/usr/bin/env bash
# Profile-guided release build of stampgate (issue 7): the binary to run in
# production when per-request CPU matters.
#
#   bash bench/pgo.sh            # about 9 minutes: two release builds and a
#                                # 30-second training run
#   SG_BIN=$(bash bench/pgo.sh)  # the last line printed is the binary's path
#   TRAIN_SECS=10 bash bench/pgo.sh   # longer training loads (default 5 s)
#
# Why: stampgate's request path executes fewer instructions than HAProxy's
# but its code (tokio, http, httparse, rustls and our state machines) is
# larger than the 32 KiB L1 instruction cache, so a plain build spends its
# extra time refetching code (bench/PERF.md, sixth and seventh rounds).
# Profile-guided optimisation lays the hot paths out together and moves
# the cold ones aside, which is what the profile asked for.
#
# Steps, all in $CARGO_TARGET_DIR (default target/) under pgo-*/:
#   1. an instrumented build (-Cprofile-generate);
#   2. a training run on loopback: the proxy in front of two simulated
#      stamps (`stampgate stamp`, two regions, the catalog API), driven by
#      wrk and h2load with the traffic a proxy sees: HTTP/1.1 keep-alive
#      GETs, POSTs with bodies, HTTP/2 (h2c and over TLS), TLS keep-alive
#      and new TLS handshakes, health probes in the background. Its origin
#      is deliberately not the nginx that bench/compare.sh measures with;
#   3. llvm-profdata merges the profile (it must be the LLVM that rustc
#      uses: `rustc -vV`; installs llvm-N from Debian if missing);
#   4. the optimised build (-Cprofile-use), copied to pgo/stampgate.
#
# Every process started here is ended by PID; every load run is bounded by
# `timeout` and goes to 127.0.0.1 only.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
# Seconds of the main training loads (the others run about half as
# long): the profile's proportions settle within a few seconds each.
TRAIN_SECS=${TRAIN_SECS:-5}
log() { printf '[pgo %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

case ${1:-} in
    "") ;;
    -h | --help) sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: bench/pgo.sh (no arguments; TRAIN_SECS and CARGO_TARGET_DIR from the environment)" >&2; exit 2 ;;
esac
[[ $TRAIN_SECS =~ ^[1-9][0-9]{0,2}$ ]] || die "TRAIN_SECS must be a whole number of seconds from 1 to 999, not '$TRAIN_SECS'"
# The proxy on one core, load and stamps on the other, as in compare.sh.
PROXY_CPU=0 LOAD_CPU=1
(($(nproc) >= 2)) || LOAD_CPU=0

# ---- tools ------------------------------------------------------------------

HOST=$(rustc -vV | awk '/^host:/ { print $2 }')
LLVM_MAJOR=$(rustc -vV | awk '/^LLVM version:/ { split($3, v, "."); print v[1] }')
[[ -n $HOST && -n $LLVM_MAJOR ]] || die "cannot read host and LLVM version from rustc -vV"

find_profdata() {
    local c
    for c in "/usr/lib/llvm-$LLVM_MAJOR/bin/llvm-profdata" "llvm-profdata-$LLVM_MAJOR"; do
        command -v "$c" >/dev/null && { echo "$c"; return 0; }
    done
    # rustup's llvm-tools component, if installed, matches rustc exactly.
    c=$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata
    [[ -x $c ]] && { echo "$c"; return 0; }
    return 1
}

install_missing() {
    local missing=() pair cmd pkg
    local needed=(wrk:wrk h2load:nghttp2-client openssl:openssl python3:python3
        curl:curl taskset:util-linux)
    for pair in "${needed[@]}"; do
        cmd=${pair%%:*} pkg=${pair#*:}
        command -v "$cmd" >/dev/null || missing+=("$pkg")
    done
    find_profdata >/dev/null || missing+=("llvm-$LLVM_MAJOR")
    ((${#missing[@]})) || return 0
    log "installing: ${missing[*]}"
    local sudo=""
    ((EUID == 0)) || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${missing[@]}" >&2 ||
        die "could not install ${missing[*]}; llvm-profdata must come from LLVM $LLVM_MAJOR (rustc's)"
}
install_missing
PROFDATA=$(find_profdata) || die "no llvm-profdata for LLVM $LLVM_MAJOR"

# ---- processes --------------------------------------------------------------

WORK=$(mktemp -d /tmp/stampgate-pgo.XXXXXX)
STARTED=()
cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${STARTED[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_ports, wait_ok, make_cert
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
LOGS_HINT="; logs in $WORK"

# cargo_build DIR FLAGS [PGO]: a release build for $HOST in $TARGET/DIR. The
# explicit --target keeps the flags off build scripts and proc macros.
# PGO=1 marks the binary as the profile-guided build: build.rs reads
# STAMPGATE_PGO, and `stampgate --version` then says "pgo build".
cargo_build() {
    (cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} $2" STAMPGATE_PGO="${3:-0}" \
        cargo build --release --quiet --locked --target "$HOST" --target-dir "$TARGET/$1")
    echo "$TARGET/$1/$HOST/release/stampgate"
}

# ---- 1. instrumented build ----------------------------------------------------

# A fixed path, so that the flags and with them the instrumented build stay
# the same from one run to the next (cargo rebuilds when RUSTFLAGS change).
RAW=$TARGET/pgo/profile
rm -rf "$RAW"
mkdir -p "$TARGET/pgo"
log "instrumented build (-Cprofile-generate)"
GEN_BIN=$(cargo_build pgo-generate "-Cprofile-generate=$RAW")

# ---- 2. training run ------------------------------------------------------------

read -r P_PROXY P_TLS P_ADMIN P_EAST P_EAST_C P_WEST P_WEST_C < <(free_ports 7)
make_cert "$WORK"
cat >"$WORK/stampgate.toml" <<EOF
[proxy]
listen = ["127.0.0.1:$P_PROXY"]
tls_listen = ["127.0.0.1:$P_TLS"]

[[proxy.certificates]]
server_names = ["localhost"]
cert = "$WORK/cert.pem"
key = "$WORK/key.pem"

[admin]
listen = "127.0.0.1:$P_ADMIN"

[access_log]
enabled = false

[[routes]]
name = "catalog-api"
path_prefix = "/catalogservice/"
pool = "catalog"

[pools.catalog]
method = "latency"

[[pools.catalog.stamps]]
name = "east-1"
region = "east"
address = "127.0.0.1:$P_EAST"

[[pools.catalog.stamps]]
name = "west-1"
region = "west"
address = "127.0.0.1:$P_WEST"
EOF

# The stamps run the same instrumented binary; their profile is thrown
# away so that the stamp's server code is not laid out as hot.
for s in "east $P_EAST $P_EAST_C" "west $P_WEST $P_WEST_C"; do
    read -r region port control <<<"$s"
    LLVM_PROFILE_FILE=$WORK/discard/%p.profraw taskset -c "$LOAD_CPU" "$GEN_BIN" --log-level warn \
        stamp --name "$region-1" --region "$region" --listen "127.0.0.1:$port" \
        --control "127.0.0.1:$control" >"$WORK/$region.log" 2>&1 &
    STARTED+=($!)
done
# One worker thread, pinned.
LLVM_PROFILE_FILE=$RAW/proxy-%p-%m.profraw TOKIO_WORKER_THREADS=1 taskset -c "$PROXY_CPU" \
    "$GEN_BIN" --log-level warn run --config "$WORK/stampgate.toml" >"$WORK/proxy.log" 2>&1 &
PROXY=$!
STARTED+=("$PROXY")

API=/catalogservice/api/1.0/catalogitem
wait_ok "http://127.0.0.1:$P_PROXY$API?limit=1" "the instrumented proxy"
ITEM=$(curl -s --max-time 5 "http://127.0.0.1:$P_PROXY$API?limit=1" |
    grep -o '"id": *"[^"]*"' | head -1 | sed 's/.*"\([^"]*\)"$/\1/')
[[ -n $ITEM ]] || die "no catalog item in the stamps' listing"
wait_ok "https://localhost:$P_TLS$API/$ITEM" "the instrumented proxy (TLS)"

TRAINING_LOG=$TARGET/pgo/training.log
: >"$TRAINING_LOG"
# load WHAT EXPECT CMD...: one bounded training load. With EXPECT=2xx a
# single other answer fails the build: a profile of error paths (say, the
# stamps failed to start) would lay out the wrong code as hot.
load() {
    local what=$1 expect=$2 out
    shift 2
    log "training: $what"
    out=$(timeout $((TRAIN_SECS + 30)) taskset -c "$LOAD_CPU" "$@" 2>&1) ||
        die "training load failed: $*: $out"
    printf '== %s\n%s\n' "$*" "$out" >>"$TRAINING_LOG"
    if [[ $expect == 2xx ]] && grep -qE 'Non-2xx|[1-9][0-9]* (failed|errored)|[1-9][0-9]* [345]xx' <<<"$out"; then
        die "training load '$what' got answers other than 2xx; see $TRAINING_LOG"
    fi
}
printf '{"author":"pgo","text":"%s"}' "$(head -c 600 /dev/zero | tr '\0' x)" >"$WORK/comment.json"
H1=http://127.0.0.1:$P_PROXY
TLS=https://localhost:$P_TLS
load "HTTP/1.1 keep-alive GETs" 2xx wrk -t1 -c64 -d"${TRAIN_SECS}s" "$H1$API/$ITEM"
load "HTTP/1.1 GETs of a listing" 2xx wrk -t1 -c16 -d"$((TRAIN_SECS / 2 + 1))s" "$H1$API?limit=20"
load "HTTP/1.1 POSTs with a body" 2xx h2load --h1 -t1 -c16 -D"$((TRAIN_SECS / 2 + 1))" \
    -d "$WORK/comment.json" -H 'content-type: application/json' "$H1$API/$ITEM/comments"
load "h2c" 2xx h2load -t1 -c32 -m10 -D"$TRAIN_SECS" "$H1$API/$ITEM"
load "TLS keep-alive" 2xx wrk -t1 -c64 -d"${TRAIN_SECS}s" "$TLS$API/$ITEM"
load "TLS handshakes" 2xx wrk -t1 -c32 -d"$((TRAIN_SECS / 2 + 1))s" -H 'Connection: close' "$TLS$API/$ITEM"
load "HTTP/2 over TLS" 2xx h2load -t1 -c32 -m10 -D"$((TRAIN_SECS / 2 + 1))" "$TLS$API/$ITEM"
load "not found" any wrk -t1 -c8 -d1s "$H1/nowhere"

# The profile is written when the process exits; a graceful stop.
kill -INT "$PROXY"
wait "$PROXY" || die "the instrumented proxy did not exit cleanly; see $WORK/proxy.log"
compgen -G "$RAW/proxy-*.profraw" >/dev/null || die "the training run wrote no profile"

# ---- 3. merge, 4. optimised build ---------------------------------------------------

"$PROFDATA" merge -o "$TARGET/pgo/stampgate.profdata" "$RAW"/proxy-*.profraw
log "optimised build (-Cprofile-use)"
USE_BIN=$(cargo_build pgo-use "-Cprofile-use=$TARGET/pgo/stampgate.profdata" 1)
cp "$USE_BIN" "$TARGET/pgo/stampgate"
"$TARGET/pgo/stampgate" --version | grep -q 'pgo build' || die "the optimised build does not say 'pgo build' in --version"
log "done: $TARGET/pgo/stampgate"
echo "$TARGET/pgo/stampgate"
