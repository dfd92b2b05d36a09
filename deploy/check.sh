#!/usr/bin/env bash
# Checks the files under deploy/ as far as this machine allows, and says
# which checks it could not run. Installs nothing; CI calls it after
# `cargo test` (which leaves target/debug/stampgate behind).
#
#   bash deploy/check.sh                 # uses target/debug/stampgate
#   STAMPGATE_BIN=/path/to/stampgate bash deploy/check.sh
#
#  - the configs of the systemd unit, the container image and the
#    Kubernetes ConfigMap pass `stampgate check`;
#  - systemd-analyze verify accepts the unit (skipped without systemd);
#  - the Kubernetes manifests parse and build with kustomize (skipped
#    without python3-yaml / kubectl);
#  - every file the Containerfile copies from the build context exists
#    (there is no container engine to build it with here).
# The Grafana dashboard is checked by `cargo test --test grafana`.

set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPLOY=$ROOT/deploy
BIN=${STAMPGATE_BIN:-$ROOT/target/debug/stampgate}
WORK=$(mktemp -d /tmp/stampgate-deploy-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

failed=0
ok() { printf 'ok       %s\n' "$*"; }
skip() { printf 'skipped  %s\n' "$*"; }
fail() { printf 'FAILED   %s\n' "$*"; failed=1; }

[[ -x $BIN ]] || { echo "deploy/check.sh: no stampgate binary at $BIN (run cargo build, or set STAMPGATE_BIN)" >&2; exit 2; }

# check_config NAME FILE [VAR=VALUE...]: `stampgate check` with the
# variables the file's ${...} need.
check_config() {
    local name=$1 file=$2 out
    shift 2
    if out=$(env "$@" "$BIN" --log-level warn check --config "$file" 2>&1); then
        ok "$name: stampgate check"
    else
        fail "$name: stampgate check: $out"
    fi
}

# ---- configs ----------------------------------------------------------------
STAMPS=(STAMP_WESTEUROPE=eu.example.com STAMP_EASTUS2=us.example.com)
check_config "systemd/stampgate.toml" "$DEPLOY/systemd/stampgate.toml" "${STAMPS[@]}"
check_config "container/stampgate.toml" "$DEPLOY/container/stampgate.toml" "${STAMPS[@]}"
# The ConfigMap's block scalar: the lines after `stampgate.toml: |`,
# indented four spaces.
awk '/^  stampgate.toml: \|$/ { inside = 1; next }
     inside && /^    / { print substr($0, 5); next }
     inside && /^$/ { print; next }
     inside { exit }' "$DEPLOY/kubernetes/configmap.yaml" >"$WORK/configmap.toml"
if [[ -s $WORK/configmap.toml ]]; then
    check_config "kubernetes/configmap.yaml" "$WORK/configmap.toml"
else
    fail "kubernetes/configmap.yaml: no stampgate.toml block found"
fi

# ---- systemd ------------------------------------------------------------------
if command -v systemd-analyze >/dev/null; then
    # verify insists that ExecStart's binary exists: point the unit at this
    # build instead of /usr/local/bin.
    sed "s|/usr/local/bin/stampgate|$BIN|g" "$DEPLOY/systemd/stampgate.service" >"$WORK/stampgate.service"
    if out=$(cd "$WORK" && systemd-analyze verify ./stampgate.service 2>&1) && [[ -z $out ]]; then
        ok "systemd/stampgate.service: systemd-analyze verify"
    else
        fail "systemd/stampgate.service: systemd-analyze verify: ${out:-exit status}"
    fi
else
    skip "systemd/stampgate.service: no systemd-analyze (apt-get install systemd)"
fi

# ---- kubernetes -----------------------------------------------------------------
if python3 -c 'import yaml' 2>/dev/null; then
    if out=$(python3 - "$DEPLOY/kubernetes" <<'EOF' 2>&1
import pathlib, sys, yaml
kinds = {}
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.yaml")):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and "kind" in doc:
            kinds.setdefault(doc["kind"], []).append(doc)
need = {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "Kustomization"}
missing = need - set(kinds)
assert not missing, f"missing kinds: {missing}"
pod = kinds["Deployment"][0]["spec"]["template"]["spec"]
c = pod["containers"][0]
assert c["readinessProbe"]["httpGet"]["path"] == "/ready", "readinessProbe on /ready"
assert "preStop" in c["lifecycle"], "a preStop hook"
labels = kinds["Deployment"][0]["spec"]["selector"]["matchLabels"]
for kind in ("Service", "PodDisruptionBudget"):
    for doc in kinds[kind]:
        sel = doc["spec"]["selector"]
        sel = sel.get("matchLabels", sel)
        assert sel == labels, f"{kind} {doc['metadata']['name']} selects {sel}, pods are {labels}"
EOF
    ); then
        ok "kubernetes/*.yaml: parse, kinds, probe, preStop, selectors"
    else
        fail "kubernetes/*.yaml: $out"
    fi
else
    skip "kubernetes/*.yaml: no python3-yaml"
fi
if command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
    if out=$(kubectl kustomize "$DEPLOY/kubernetes" 2>&1 >/dev/null); then
        ok "kubernetes/: kubectl kustomize"
    else
        fail "kubernetes/: kubectl kustomize: $out"
    fi
else
    skip "kubernetes/: no kubectl for kustomize"
fi

# ---- container ------------------------------------------------------------------
# Sources of COPY lines without --from, relative to the build context (the
# repository root); "." is the whole context.
missing=()
while read -r src; do
    [[ $src == . || -e $ROOT/$src ]] || missing+=("$src")
done < <(awk '$1 == "COPY" && $2 !~ /^--from/ { for (i = 2; i < NF; i++) if ($i !~ /^--/) print $i }' "$DEPLOY/Containerfile")
if ((${#missing[@]})); then
    fail "Containerfile: COPY of missing files: ${missing[*]}"
else
    ok "Containerfile: every COPY source exists (not built: no container engine here)"
fi

exit "$failed"
