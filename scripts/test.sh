#!/usr/bin/env bash
# The project's test command: installs what the tests need when missing, then runs
# `cargo test --workspace` (extra arguments are passed through, e.g. `-p agentwire-broker`), then
# the heavy #[ignore]d tests by name.
set -euo pipefail
cd "$(dirname "$0")/.."

# Run as root directly, otherwise through sudo.
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# cli/tests/prometheus.rs scrapes a real broker with a real Prometheus server (Debian's
# `prometheus` package; the test starts it itself on an ephemeral loopback port).
if ! command -v prometheus >/dev/null 2>&1; then
    # Refresh the package lists only when the package is not known yet.
    if ! apt-cache show prometheus >/dev/null 2>&1; then
        $SUDO apt-get update
    fi
    $SUDO env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends prometheus
    # The package may start a system service on :9090; stop it so nothing is left running.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
        $SUDO systemctl disable --now prometheus || true
    fi
    if command -v service >/dev/null 2>&1; then
        $SUDO service prometheus stop >/dev/null 2>&1 || true
    fi
    if command -v ss >/dev/null 2>&1 && ss -ltn 'sport = :9090' | grep -q LISTEN; then
        echo "scripts/test.sh: something still listens on :9090 after installing prometheus:" >&2
        ss -ltnp 'sport = :9090' >&2 || true
    fi
fi

# cli/tests/dashboard.rs drives the web dashboard in headless Debian `chromium` with
# `playwright-core` (npm, pinned by cli/tests/browser/package-lock.json; no browser download).
if [ ! -x /usr/bin/chromium ]; then
    if ! apt-cache show chromium >/dev/null 2>&1; then
        $SUDO apt-get update
    fi
    $SUDO env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends chromium
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    if ! apt-cache show nodejs >/dev/null 2>&1; then
        $SUDO apt-get update
    fi
    $SUDO env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends nodejs npm
fi
if [ ! -d cli/tests/browser/node_modules/playwright-core ]; then
    (cd cli/tests/browser && npm ci --no-audit --no-fund)
fi
# The deployment files in ops/: promtool, Kubernetes schemas, compose schema, systemd unit
# (ops/check.sh installs its Python tools into a venv under ~/.cache when missing).
ops/check.sh

# soak/tests/soak.rs runs the `agentwire` binary beside the soak binary; `cargo test --workspace`
# builds it for the CLI's own tests, this makes sure of it when only some packages are tested.
cargo build -p agentwire-cli --bin agentwire

cargo test --workspace "$@"

# The heavy tests are #[ignore]d, so that a plain `cargo test` needs no sudo, network, browser or
# minute-long run; this command installed what they need above and runs them by name (unless
# it was given arguments, which select what `cargo test` runs).
# `--workspace` keeps the feature resolution of the run above, so nothing is rebuilt.
if [ "$#" -eq 0 ]; then
    cargo test --workspace --test prometheus --test dashboard --test soak -- --ignored
fi
