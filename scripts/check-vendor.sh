#!/usr/bin/env bash
# Checks that vendor/hyper is hyper 1.12.0 as published on crates.io plus
# exactly vendor/hyper-1.12.0.patch (the changes vendor/PATCHES.md lists),
# and nothing else: no hand edit slips into the fork unrecorded.
#
#   bash scripts/check-vendor.sh
#
# Network-free: the published crate is taken from cargo's download cache
# ($CARGO_HOME/registry/cache), checked against its crates.io SHA-256. A
# machine that never downloaded hyper 1.12.0 has no copy (the [patch] in
# Cargo.toml keeps cargo from fetching it); the script then exits 2 and
# says how to get one. Exit 0: equal; 1: differs.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=1.12.0
# crates.io's checksum of hyper-1.12.0.crate (the registry index's
# `cksum`; cargo verified it when it downloaded the file).
SHA256=2c3e324da4c95177d6291d4c8730197c0d1822f8a9766814a4a44fa5ab797c9c
PATCH=vendor/hyper-$VERSION.patch

crate=""
for f in "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/hyper-"$VERSION".crate; do
    [[ -f $f ]] && crate=$f && break
done
if [[ -z $crate ]]; then
    cat >&2 <<MSG
check-vendor: no hyper-$VERSION.crate in cargo's cache. Fetch it once (network):
    cargo new --lib /tmp/hyper-fetch && cd /tmp/hyper-fetch &&
    cargo add hyper@=$VERSION && cargo fetch
then run this script again.
MSG
    exit 2
fi
echo "$SHA256  $crate" | sha256sum --check --quiet - ||
    { echo "check-vendor: $crate is not the crate crates.io published" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$crate" -C "$work"
upstream=$work/hyper-$VERSION
patch --quiet --directory="$upstream" --strip=1 --no-backup-if-mismatch <"$PATCH" ||
    { echo "check-vendor: $PATCH does not apply to hyper $VERSION" >&2; exit 1; }
# What the crate holds besides what is vendored: cargo's bookkeeping and
# the unnormalised manifest.
if diff -r --exclude=.cargo_vcs_info.json --exclude=Cargo.toml.orig --exclude=Cargo.lock \
    "$upstream" vendor/hyper; then
    echo "check-vendor: vendor/hyper is hyper $VERSION plus $PATCH ($(grep -c '^@@' "$PATCH") hunks)"
else
    echo "check-vendor: vendor/hyper differs from hyper $VERSION plus $PATCH (diff above)" >&2
    exit 1
fi
