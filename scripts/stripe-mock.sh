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

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$SCRIPT_DIR")"
SERVICES_DIR="${QUANTUS_SERVICES_DIR:-$REPO_DIR/.services}"
STRIPE_MOCK_VERSION="${QUANTUS_STRIPE_MOCK_VERSION:-v0.203.0}"
MODULE=github.com/stripe/stripe-mock

STRIPE_DIR="$SERVICES_DIR/stripe-mock"
# Binary cache: survives `stop`, so only the very first start pays for the build.
INSTALL_DIR="${QUANTUS_STRIPE_MOCK_INSTALL_DIR:-${QUANTUS_CACHE_DIR:-${HOME:-/root}/.cache/quantus}/stripe-mock-$STRIPE_MOCK_VERSION}"
BIN="$INSTALL_DIR/bin/stripe-mock"
# Written last by the install: a half-finished build is never used.
INSTALL_MARKER="$INSTALL_DIR/.complete"
# Next to the cache, so clones sharing the install dir share the lock too.
INSTALL_LOCK="$INSTALL_DIR.lock"
INSTALL_LOG="$INSTALL_DIR.log"
# Server state: deleted by `stop`.
RUN_DIR="$STRIPE_DIR/run"
LOG_FILE="$RUN_DIR/stripe-mock.log"
PID_FILE="$RUN_DIR/stripe-mock.pid"
PORT_FILE="$RUN_DIR/port"
ENV_FILE="$SERVICES_DIR/stripe-mock.env"
LOCK_FILE="$SERVICES_DIR/.stripe-mock.lock"

# stripe-mock accepts any well-formed test key; the readiness probe uses this one.
PROBE_KEY=sk_test_123
READY_TIMEOUT=${QUANTUS_STRIPE_MOCK_READY_TIMEOUT:-30}
STOP_TIMEOUT=15
INSTALL_LOCK_TIMEOUT=900 # a concurrent caller may be building stripe-mock (20-30 s, more on a slow network)

log() { printf 'stripe-mock.sh: %s\n' "$*" >&2; }
die() {
    printf 'stripe-mock.sh: ERROR: %s\n' "$*" >&2
    exit 1
}

usage() {
    echo "usage: $0 start|stop|env" >&2
    exit 2
}

apt_install() {
    if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null; then
        die "$* is required but missing, and cannot be installed automatically (need root + apt-get)"
    fi
    log "installing $* with apt-get"
    # apt output to stderr: stdout is reserved for the env line.
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"; } >&2 ||
        die "apt-get install $* failed; install it manually"
}

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

# Build stripe-mock into $INSTALL_DIR once; concurrent callers wait for the builder.
ensure_binary() {
    installed && return
    mkdir -p "$(dirname "$INSTALL_DIR")"
    exec 8>"$INSTALL_LOCK"
    flock -w "$INSTALL_LOCK_TIMEOUT" 8 || die "timed out waiting for $INSTALL_LOCK (another stripe-mock build?)"
    if installed; then
        exec 8>&-
        return
    fi
    ensure_go

    local tmp="$INSTALL_DIR.partial" started=$SECONDS
    rm -rf "$tmp"
    mkdir -p "$tmp/bin"
    log "building stripe-mock $STRIPE_MOCK_VERSION with go install into $INSTALL_DIR (one-off, 20-30 s; log: $INSTALL_LOG)"
    # GOBIN: the binary lands in our cache, not ~/go/bin. Outside any module (cd to
    # the cache's parent), so `go install pkg@version` uses the module's own go.mod/go.sum.
    if ! (cd "$(dirname "$INSTALL_DIR")" && GOBIN="$tmp/bin" \
        "$GO" install "$MODULE@$STRIPE_MOCK_VERSION") >"$INSTALL_LOG" 2>&1 9>&- 8>&-; then
        log "---- last 40 lines of $INSTALL_LOG ----"
        tail -n 40 "$INSTALL_LOG" >&2 || true
        log "---- end of log ----"
        rm -rf "$tmp"
        die "go install $MODULE@$STRIPE_MOCK_VERSION failed (needs the Go module proxy or github.com, and a Go toolchain; see above)"
    fi
    [[ -x "$tmp/bin/stripe-mock" ]] || die "go install finished but $tmp/bin/stripe-mock is missing"
    echo "$MODULE@$STRIPE_MOCK_VERSION" >"$tmp/.complete"
    # Swap in the complete install last.
    rm -rf "$INSTALL_DIR"
    mv "$tmp" "$INSTALL_DIR"
    installed || die "install of stripe-mock into $INSTALL_DIR did not complete"
    log "built stripe-mock $STRIPE_MOCK_VERSION in $((SECONDS - started))s"
    exec 8>&-
}

# Two distinct free ports from the kernel (both bound at once, so they differ);
# fallback: scan from 59112 with bash's /dev/tcp.
free_ports() {
    if command -v python3 >/dev/null &&
        python3 - 2>/dev/null <<'EOF'; then
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
        return
    fi
    local port found=()
    for ((port = 59112; port < 60112 && ${#found[@]} < 2; port++)); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            found+=("$port")
        fi
    done
    ((${#found[@]} == 2)) || die "no free TCP ports found in 59112-60111"
    echo "${found[*]}"
}

# Is the pid in $PID_FILE alive and really our server (guards against pid reuse)?
server_pid() {
    local pid
    [[ -f "$PID_FILE" && -f "$PORT_FILE" ]] || return 1
    pid="$(cat "$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null |
        grep -F -- "stripe-mock -http-addr 127.0.0.1:$(cat "$PORT_FILE") " >/dev/null || return 1
    echo "$pid"
}

# Does PID itself hold the listening socket on 127.0.0.1:PORT? A bare port
# probe could be answered by another server that got the port first (ours then
# dies with "address already in use" a moment later).
pid_listens_on() {
    local pid="$1" port="$2" hexport fd link inodes=" "
    printf -v hexport '%04X' "$port"
    for fd in "/proc/$pid/fd/"*; do
        link="$(readlink "$fd" 2>/dev/null)" || continue
        [[ "$link" =~ ^socket:\[([0-9]+)\]$ ]] && inodes+="${BASH_REMATCH[1]} "
    done
    # /proc/net/tcp columns: 2 local_address (hex ip:port), 4 state (0A = LISTEN), 10 inode.
    awk -v port=":$hexport" -v inodes="$inodes" '
        $4 == "0A" && substr($2, length($2) - 4) == port && index(inodes, " " $10 " ") { found = 1 }
        END { exit !found }' "/proc/$pid/net/tcp" "/proc/$pid/net/tcp6" 2>/dev/null
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
    pid="$(server_pid)" && pid_listens_on "$pid" "$(cat "$PORT_FILE")" && [[ "$(probe_status)" == 200 ]]
}

env_line() {
    echo "STRIPE_API_BASE=$(api_base)"
}

write_env() {
    env_line >"$ENV_FILE.tmp.$$"
    mv -f "$ENV_FILE.tmp.$$" "$ENV_FILE"
    cat "$ENV_FILE"
}

stop_server() {
    local pid
    if pid="$(server_pid)"; then
        log "stopping stripe-mock (pid/pgid $pid)"
        # The server runs in its own session/process group (setsid): signal the group.
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + STOP_TIMEOUT))
        while kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS >= deadline)); then
                log "stripe-mock did not exit within ${STOP_TIMEOUT}s; sending SIGKILL"
                kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
                sleep 0.5
                break
            fi
            sleep 0.2
        done
    fi
    rm -rf "$RUN_DIR"
    rmdir "$STRIPE_DIR" 2>/dev/null || true
    rm -f "$ENV_FILE"
}

kill_unready_server() {
    local pid
    if pid="$(server_pid)"; then
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
}

fail_start() {
    log "---- last 60 lines of $LOG_FILE ----"
    tail -n 60 "$LOG_FILE" >&2 2>/dev/null || true
    log "---- end of log ----"
    kill_unready_server
    die "$1 (state kept in $RUN_DIR for inspection; '$0 stop' removes it)"
}

# One attempt at launch + wait on fresh ports. Sets PORT_TAKEN=1 when a port was
# grabbed by someone else between choosing and binding (caller retries); dies on
# any other failure. Deliberately not signalled via the return code: calling it
# in `if` would disable `set -e` inside it.
PORT_TAKEN=0
try_start() {
    PORT_TAKEN=0
    local ports port https_port pid
    ports="$(free_ports)"
    read -r port https_port <<<"$ports"

    rm -rf "$RUN_DIR"
    mkdir -p "$RUN_DIR"
    echo "$port" >"$PORT_FILE"

    log "starting stripe-mock $STRIPE_MOCK_VERSION on 127.0.0.1:$port (https 127.0.0.1:$https_port)"
    # setsid: own session + process group, so `stop` can kill the whole group and
    # the server survives the caller's terminal/CI step. No job control here, so
    # setsid does not fork and $! is the server pid (== pgid). The loop closes every
    # descriptor above 2: our flock descriptors (8, 9) must not be held by the
    # long-running server, nor any pipe inherited from the caller (a test harness
    # reading our stdout waits for it to close).
    (
        cd "$RUN_DIR"
        for fd in /proc/self/fd/*; do
            fd="${fd##*/}"
            if [[ "$fd" =~ ^[0-9]+$ ]] && ((fd > 2)); then
                eval "exec $fd>&-" 2>/dev/null || true
            fi
        done
        exec setsid nohup "$BIN" -http-addr "127.0.0.1:$port" -https-addr "127.0.0.1:$https_port" -strict-version-check \
            </dev/null >>"$LOG_FILE" 2>&1
    ) &
    pid=$!
    echo "$pid" >"$PID_FILE"

    local deadline=$((SECONDS + READY_TIMEOUT)) code=000
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            if grep -qi 'address already in use' "$LOG_FILE" 2>/dev/null; then
                log "a port was taken meanwhile; retrying with other ports"
                PORT_TAKEN=1
                return 0
            fi
            fail_start "stripe-mock exited during startup"
        fi
        if pid_listens_on "$pid" "$port"; then
            code="$(probe_status)"
            [[ "$code" == 200 ]] && return 0
        fi
        ((SECONDS < deadline)) ||
            fail_start "stripe-mock not answering GET /v1/customers with 200 on 127.0.0.1:$port within ${READY_TIMEOUT}s (last HTTP status: $code)"
        sleep 0.2
    done
}

lock_state() {
    mkdir -p "$SERVICES_DIR"
    exec 9>"$LOCK_FILE"
    # Serialise concurrent start/stop (e.g. parallel test runners).
    flock -w 120 9 || die "timed out waiting for $LOCK_FILE"
}

cmd_start() {
    ensure_curl
    # Before taking the state lock: the build may take a while and has its own lock.
    ensure_binary
    lock_state
    if is_running; then
        log "already running (pid $(cat "$PID_FILE"), $(api_base))"
        write_env
        return
    fi
    if [[ -d "$RUN_DIR" ]]; then
        log "removing stale server state in $RUN_DIR"
        stop_server
    fi

    # If anything below dies unexpectedly, do not leave a half-started server behind.
    trap 'kill_unready_server' EXIT
    local attempt started=$SECONDS
    for attempt in 1 2 3; do
        try_start
        if ((PORT_TAKEN == 0)); then
            trap - EXIT
            log "ready after $((SECONDS - started))s (stripe-mock $STRIPE_MOCK_VERSION, log: $LOG_FILE)"
            write_env
            return
        fi
        log "start attempt $attempt failed"
    done
    die "stripe-mock could not be started after 3 attempts (see $LOG_FILE)"
}

cmd_stop() {
    lock_state
    if [[ ! -d "$RUN_DIR" ]]; then
        log "not running"
        rm -f "$ENV_FILE"
        return
    fi
    stop_server
    log "stopped (built binary kept in $INSTALL_DIR)"
}

cmd_env() {
    if is_running; then
        env_line
    else
        log "not running"
        exit 1
    fi
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
env) cmd_env ;;
*) usage ;;
esac
