#!/usr/bin/env bash
# Throwaway Stripe API for tests: stripe-mock (github.com/stripe/stripe-mock,
# Stripe's own mock, answering from the OpenAPI spec and fixtures it embeds),
# built once with `go install` and run on 127.0.0.1.
#
#   scripts/stripe-mock.sh start   # start (or reuse) the server, print STRIPE_API_BASE=...
#   scripts/stripe-mock.sh env     # print STRIPE_API_BASE=... if running, else exit 1
#   scripts/stripe-mock.sh stop    # stop the server and delete its state (the built binary is kept)
#
# stdout of start/env carries exactly one line (callers can `eval`/source it):
#   STRIPE_API_BASE=http://127.0.0.1:<port>
# every other message goes to stderr. Any key of the form sk_test_... is accepted;
# requests without one, or with a malformed one, get 401.
#
# Known differences from api.stripe.com, worth knowing when writing tests:
#   - stateless: every answer comes from fixtures with the request's fields
#     reflected where the spec allows; created objects are not stored, so a GET
#     after a POST does not see it, and finalize/pay do not change a status.
#   - request bodies are validated against the spec of the API version it ships
#     (unknown parameters and wrong types give 400), but not business rules.
#   - Idempotency-Key is accepted and ignored (no replay of earlier answers).
#
# Environment:
#   QUANTUS_SERVICES_DIR                state dir (default: <repo>/.services)
#   QUANTUS_STRIPE_MOCK_VERSION         stripe-mock module version (default: v0.203.0)
#   QUANTUS_STRIPE_MOCK_READY_TIMEOUT   seconds to wait for the server to answer (default: 30)
#   QUANTUS_STRIPE_MOCK_INSTALL_DIR     where the built stripe-mock is cached (default:
#                                       ~/.cache/quantus/stripe-mock-<version>, outside the
#                                       clone, so a fresh clone (CI) does not rebuild it)
set -euo pipefail

SERVICE=stripe-mock
# shellcheck source-path=SCRIPTDIR source=lib/service.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/service.sh"

STRIPE_MOCK_VERSION="${QUANTUS_STRIPE_MOCK_VERSION:-v0.203.0}"
MODULE=github.com/stripe/stripe-mock

STRIPE_DIR="$SERVICES_DIR/stripe-mock"
# Binary cache: survives `stop`, so only the very first start pays for the build.
INSTALL_DIR="${QUANTUS_STRIPE_MOCK_INSTALL_DIR:-$CACHE_DIR/stripe-mock-$STRIPE_MOCK_VERSION}"
BIN="$INSTALL_DIR/bin/stripe-mock"
# Written last by the install: a half-finished build is never used.
INSTALL_MARKER="$INSTALL_DIR/.complete"
# Next to the cache, so clones sharing the install dir share the lock too.
INSTALL_LOCK="$INSTALL_DIR.lock"
INSTALL_LOG="$INSTALL_DIR.log"
# Server state: deleted by `stop`.
RUN_DIR="$STRIPE_DIR/run"
STATE_DIR="$RUN_DIR"
LOG_FILE="$RUN_DIR/stripe-mock.log"
PID_FILE="$RUN_DIR/stripe-mock.pid"
PORT_FILE="$RUN_DIR/port"
ENV_FILE="$SERVICES_DIR/stripe-mock.env"
LOCK_FILE="$SERVICES_DIR/.stripe-mock.lock"
STOPPED_NOTE=" (built binary kept in $INSTALL_DIR)"

# stripe-mock accepts any well-formed test key; the readiness probe uses this one.
PROBE_KEY=sk_test_123
READY_TIMEOUT=${QUANTUS_STRIPE_MOCK_READY_TIMEOUT:-30}
STOP_TIMEOUT=15
INSTALL_LOCK_TIMEOUT=900 # a concurrent caller may be building stripe-mock (20-30 s, more on a slow network)

ensure_curl() {
    command -v curl >/dev/null || apt_install curl
}

# The go tool: PATH, then the official tarball's location, then apt's golang-go
# (if that one is older than stripe-mock's go.mod asks for, `go install` fetches the
# right toolchain itself, GOTOOLCHAIN=auto, or fails below with its own message).
GO=""
ensure_go() {
    if GO="$(command -v go)"; then
        return
    fi
    for GO in /usr/local/go/bin/go /usr/lib/go/bin/go; do
        [[ -x "$GO" ]] && return
    done
    apt_install golang-go
    GO="$(command -v go)" || die "go still missing after installing golang-go"
}

installed() {
    [[ -x "$BIN" && -f "$INSTALL_MARKER" ]]
}

# Builds stripe-mock into $INSTALL_DIR (under install_once's lock).
build() {
    ensure_go
    local tmp="$INSTALL_DIR.partial" started=$SECONDS
    rm -rf "$tmp"
    mkdir -p "$tmp/bin"
    log "building stripe-mock $STRIPE_MOCK_VERSION with go install into $INSTALL_DIR (one-off, 20-30 s; log: $INSTALL_LOG)"
    # GOBIN: the binary lands in our cache, not ~/go/bin. Outside any module (cd to
    # the cache's parent), so `go install pkg@version` uses the module's own go.mod/go.sum.
    if ! (cd "$(dirname "$INSTALL_DIR")" && GOBIN="$tmp/bin" \
        "$GO" install "$MODULE@$STRIPE_MOCK_VERSION") >"$INSTALL_LOG" 2>&1 9>&- 8>&-; then
        show_log "$INSTALL_LOG" 40
        rm -rf "$tmp"
        die "go install $MODULE@$STRIPE_MOCK_VERSION failed (needs the Go module proxy or github.com, and a Go toolchain; see above)"
    fi
    [[ -x "$tmp/bin/stripe-mock" ]] || die "go install finished but $tmp/bin/stripe-mock is missing"
    echo "$MODULE@$STRIPE_MOCK_VERSION" >"$tmp/.complete"
    # Swap in the complete install last.
    rm -rf "$INSTALL_DIR"
    mv "$tmp" "$INSTALL_DIR"
    log "built stripe-mock $STRIPE_MOCK_VERSION in $((SECONDS - started))s"
}

running_pid() {
    [[ -f "$PORT_FILE" ]] || return 1
    server_pid "stripe-mock -http-addr 127.0.0.1:$(cat "$PORT_FILE") "
}

api_base() {
    echo "http://127.0.0.1:$(cat "$PORT_FILE")"
}

# HTTP status of an authenticated list call (000 if no answer).
probe_status() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 5 -u "$PROBE_KEY:" "$(api_base)/v1/customers" 2>/dev/null || true
}

is_running() {
    local pid
    pid="$(running_pid)" && pid_listens_on "$pid" "$(cat "$PORT_FILE")" && [[ "$(probe_status)" == 200 ]]
}

env_lines() {
    echo "STRIPE_API_BASE=$(api_base)"
}

stop_service() {
    stop_running
    rm -rf "$RUN_DIR"
    rmdir "$STRIPE_DIR" 2>/dev/null || true
    rm -f "$ENV_FILE"
}

# Serving: our pid listens on the port and answers an authenticated call with 200.
serves() {
    local code=000
    if pid_listens_on "$SPAWNED_PID" "$1"; then
        code="$(probe_status)"
    fi
    PROBE_DETAIL=" (last HTTP status: $code)"
    [[ "$code" == 200 ]]
}

# One attempt at launch + wait on fresh ports (see retry_start).
try_start() {
    local ports port https_port
    ports="$(free_ports 2 59112)"
    read -r port https_port <<<"$ports"

    rm -rf "$RUN_DIR"
    mkdir -p "$RUN_DIR"
    echo "$port" >"$PORT_FILE"

    log "starting stripe-mock $STRIPE_MOCK_VERSION on 127.0.0.1:$port (https 127.0.0.1:$https_port)"
    spawn_detached "$RUN_DIR" "$BIN" -http-addr "127.0.0.1:$port" -https-addr "127.0.0.1:$https_port" -strict-version-check
    wait_serving "$SPAWNED_PID" "$port" 0.2 'address already in use' serves \
        "stripe-mock not answering GET /v1/customers with 200 on 127.0.0.1:$port within ${READY_TIMEOUT}s"
}

cmd_start() {
    ensure_curl
    # Before taking the state lock: the build may take a while and has its own lock.
    install_once installed "$INSTALL_LOCK" "$INSTALL_LOCK_TIMEOUT" build
    start_server "stripe-mock $STRIPE_MOCK_VERSION"
}

service_main "$@"
