#!/usr/bin/env bash
# The test command: installs the system packages the test suite needs, then
# runs `cargo test`. README and .ci/run both use exactly this, so a fresh
# machine passes the same way CI does.
#
#   bash scripts/test.sh              # install what is missing, then cargo test
#   bash scripts/test.sh --deps-only  # only install (what .ci/run does before clippy)
#   bash scripts/test.sh -- ARGS      # pass ARGS to cargo test
#
# Packages (Debian names), and which tests need them:
#   chromium           tests/dashboard.rs renders the dashboard headless
#   etcd-server        tests/fleet.rs runs a real etcd on loopback
#   protobuf-compiler  the etcd client's build script compiles its protos
#   libprotobuf-dev    ... which import google/protobuf/*.proto from it (only a
#                      Recommends of protobuf-compiler, and we install none)
#   systemd            deploy/check.sh runs systemd-analyze verify
#   python3-yaml       deploy/check.sh parses the Kubernetes manifests
#
# After cargo test, deploy/check.sh checks the files under deploy/ with the
# binary the tests built (stampgate check on their configs, the unit, the
# manifests), and scripts/check-vendor.sh that vendor/hyper is hyper 1.12.0
# plus exactly vendor/hyper-1.12.0.patch.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(chromium etcd-server protobuf-compiler libprotobuf-dev systemd python3-yaml)

deps_only=0
if [[ ${1:-} == --deps-only ]]; then deps_only=1; shift; fi
[[ ${1:-} == -- ]] && shift

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]] && ! command -v sudo >/dev/null; then
        echo "scripts/test.sh: missing packages ${missing[*]}; install them as root" >&2
        exit 1
    fi
    SUDO=$([[ $(id -u) -eq 0 ]] || echo sudo)
    echo "scripts/test.sh: installing ${missing[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
((deps_only)) && exit 0

cargo test "$@"
bash deploy/check.sh
bash scripts/check-vendor.sh
