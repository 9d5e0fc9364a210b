#!/usr/bin/env bash
# Checks of the deployment files in ops/ (run by scripts/test.sh; runnable alone):
#   - Prometheus: `promtool check config`, `promtool check rules`, `promtool test rules`;
#   - Kubernetes: every manifest in ops/k8s validated against the Kubernetes OpenAPI schemas,
#     strict (unknown fields rejected), offline, with PyPI's kubernetes-validate;
#   - Compose: ops/compose/compose.yaml against the compose-spec schema (PyPI's
#     check-jsonschema, which ships it), and `docker compose config` when that plugin exists;
#   - Grafana: the dashboard and provisioning files parse;
#   - systemd: `systemd-analyze verify` on the unit, when systemd-analyze exists, with no
#     warning allowed.
# The Grafana queries and alert expressions naming exported metrics is checked by
# admin/tests/ops_files.rs (cargo test).
#
# Tools: promtool comes with Debian's `prometheus` package (scripts/test.sh installs it); the
# Python tools go into a venv, $AGENTWIRE_OPS_VENV or ~/.cache/agentwire-ops/venv, created
# and filled from PyPI only when missing. Nothing else reaches the network.
set -euo pipefail
cd "$(dirname "$0")"

KUBERNETES_VALIDATE_VERSION=1.37.0
CHECK_JSONSCHEMA_VERSION=0.39.0
VENV="${AGENTWIRE_OPS_VENV:-${HOME}/.cache/agentwire-ops/venv}"

fail() { echo "ops/check.sh: $*" >&2; exit 1; }
step() { echo "ops/check.sh: $*"; }

command -v promtool >/dev/null 2>&1 \
    || fail "promtool is missing: run scripts/test.sh, or apt-get install prometheus"

# The Python tools, pinned, installed once.
venv_ok() {
    [ -x "$VENV/bin/kubernetes-validate" ] && [ -x "$VENV/bin/check-jsonschema" ] \
        && [ "$("$VENV/bin/pip" show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p')" = "$KUBERNETES_VALIDATE_VERSION" ] \
        && [ "$("$VENV/bin/pip" show check-jsonschema 2>/dev/null | sed -n 's/^Version: //p')" = "$CHECK_JSONSCHEMA_VERSION" ]
}
if ! venv_ok; then
    command -v python3 >/dev/null 2>&1 || fail "python3 is needed for the Kubernetes and compose checks"
    if ! python3 -m venv --help >/dev/null 2>&1; then
        SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv
    fi
    step "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION and check-jsonschema $CHECK_JSONSCHEMA_VERSION into $VENV"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
        "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"
    venv_ok || fail "the venv at $VENV is not usable after installing"
fi

step "promtool check config"
promtool check config prometheus/prometheus.yml
step "promtool check rules"
promtool check rules prometheus/alerts.yml
step "promtool test rules"
promtool test rules prometheus/alerts_test.yml

step "Kubernetes manifests (kubernetes-validate --strict)"
manifests=()
for f in k8s/*.yaml; do
    [ "$(basename "$f")" = kustomization.yaml ] && continue
    manifests+=("$f")
done
[ "${#manifests[@]}" -gt 0 ] || fail "no manifests in ops/k8s"
"$VENV/bin/kubernetes-validate" --strict --quiet "${manifests[@]}"
# kustomization.yaml must list every manifest.
for f in "${manifests[@]}"; do
    grep -qx "  - $(basename "$f")" k8s/kustomization.yaml \
        || fail "k8s/kustomization.yaml does not list $(basename "$f")"
done

step "compose file (compose-spec schema)"
"$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec compose/compose.yaml
if docker compose version >/dev/null 2>&1; then
    step "docker compose config"
    docker compose -f compose/compose.yaml config --quiet
fi

step "Grafana dashboard and provisioning parse"
"$VENV/bin/python" - <<'PY'
import json, sys, yaml
d = json.load(open("grafana/agentwire.json"))
assert d.get("uid") == "agentwire" and d.get("panels"), "dashboard uid and panels"
uids = {p["datasource"]["uid"] for p in d["panels"] if "datasource" in p}
ds = yaml.safe_load(open("grafana/provisioning/datasources/prometheus.yml"))
provisioned = {x["uid"] for x in ds["datasources"]}
assert uids <= provisioned, f"dashboard datasources {uids} not all provisioned {provisioned}"
yaml.safe_load(open("grafana/provisioning/dashboards/agentwire.yml"))
PY

if command -v systemd-analyze >/dev/null 2>&1; then
    step "systemd-analyze verify"
    out="$(systemd-analyze verify systemd/agentwire.service 2>&1)" || fail "systemd-analyze verify failed: $out"
    [ -z "$out" ] || fail "systemd-analyze verify warned: $out"
fi

step "all ops checks passed"
