#!/usr/bin/env bash
# Checks that vendor/hyper is hyper 1.12.0 as published on crates.io plus
# exactly vendor/hyper-1.12.0.patch (the changes vendor/PATCHES.md lists),
# and nothing else: no hand edit slips into the fork unrecorded.
#
#   bash scripts/check-vendor.sh
#
# The published crate is taken from cargo's download cache
# ($CARGO_HOME/registry/cache) or, on a machine that never downloaded it
# (the [patch] in Cargo.toml keeps cargo from fetching it), from
# static.crates.io; either way it is checked against its crates.io SHA-256.
# scripts/test.sh runs it after the tests. Exit 0: equal; 1: differs; 2:
# no copy of the crate to compare with.
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
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [[ -z $crate ]]; then
    # Not cached (a fresh clone: the [patch] keeps cargo from fetching it):
    # fetch it from where cargo fetches every crate; the pinned SHA-256
    # below is what makes the copy trustworthy, not the transport.
    url=https://static.crates.io/crates/hyper/hyper-$VERSION.crate
    crate=$work/hyper-$VERSION.crate
    if command -v curl >/dev/null; then
        curl --fail --silent --show-error --location --retry 3 -o "$crate" "$url" || crate=""
    else
        python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
            "$url" "$crate" || crate=""
    fi
    if [[ -z $crate ]]; then
        echo "check-vendor: no hyper-$VERSION.crate in cargo's cache and $url could not be fetched" >&2
        exit 2
    fi
fi
echo "$SHA256  $crate" | sha256sum --check --quiet - ||
    { echo "check-vendor: $crate is not the crate crates.io published" >&2; exit 1; }

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
