#!/usr/bin/env bash
# Throwaway S3-compatible server for tests: s3s-fs (crates.io, the `s3s` crate's
# file-system backend), built once with `cargo install` and run on 127.0.0.1.
# It checks AWS SigV4 signatures: requests signed with another secret, or not
# signed at all, get 403.
#
#   scripts/s3.sh start   # start (or reuse) the server, print the S3_* lines below
#   scripts/s3.sh env     # print the S3_* lines if running, else exit 1
#   scripts/s3.sh stop    # stop the server and delete its data (the built binary is kept)
#
# stdout of start/env carries exactly these lines (callers can `eval`/source them):
#   S3_ENDPOINT=http://127.0.0.1:<port>
#   S3_ACCESS_KEY_ID=quantus
#   S3_SECRET_ACCESS_KEY=quantus-secret-key-for-tests
#   S3_REGION=us-east-1
#   S3_BUCKET=quantus-test
# every other message goes to stderr. Use path-style requests (object_store's
# default; boto3: addressing_style="path").
#
# Known differences from AWS S3 (s3s-fs 0.14.1), worth knowing when writing tests:
#   - conditional PUT (If-None-Match: *, If-Match: <etag>) answers 412 correctly
#     for one writer, but is check-then-write, NOT atomic: concurrent writers can
#     all win. Do not test optimistic-concurrency races against this server.
#   - conditional GET/HEAD headers (If-Match, If-None-Match, If-Modified-Since...)
#     are ignored: always 200, never 304/412.
#   - keys map to files, so "a" and "a/b" cannot both exist (the second PUT is 500).
#   - virtual-hosted-style requests need a --domain the script does not set.
#
# Environment:
#   QUANTUS_SERVICES_DIR     state dir (default: <repo>/.services)
#   QUANTUS_S3S_FS_VERSION   s3s-fs version from crates.io (default: 0.14.1, the
#                            newest that builds with rustc < 1.96)
#   QUANTUS_S3_READY_TIMEOUT seconds to wait for the server to listen (default: 30)
#   QUANTUS_S3_INSTALL_DIR   where the built s3s-fs is cached (default:
#                            ~/.cache/quantus/s3s-fs-<version>, outside the clone, so a fresh
#                            clone (CI) does not rebuild it: 2-4 min on 2 cores)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$SCRIPT_DIR")"
SERVICES_DIR="${QUANTUS_SERVICES_DIR:-$REPO_DIR/.services}"
S3S_FS_VERSION="${QUANTUS_S3S_FS_VERSION:-0.14.1}"

S3_DIR="$SERVICES_DIR/s3"
# Binary cache: survives `stop`, so only the very first start pays for the build.
# Outside the clone by default (like Kafka's jars), so a fresh clone (CI) does not rebuild it.
INSTALL_DIR="${QUANTUS_S3_INSTALL_DIR:-${QUANTUS_CACHE_DIR:-${HOME:-/root}/.cache/quantus}/s3s-fs-$S3S_FS_VERSION}"
BIN="$INSTALL_DIR/bin/s3s-fs"
# Next to the cache, so clones sharing QUANTUS_S3_INSTALL_DIR share the lock too.
INSTALL_LOCK="$INSTALL_DIR.lock"
INSTALL_LOG="$INSTALL_DIR.log"
# Server state: deleted by `stop`.
RUN_DIR="$S3_DIR/run"
DATA_DIR="$RUN_DIR/data"
LOG_FILE="$RUN_DIR/s3s-fs.log"
PID_FILE="$RUN_DIR/s3s-fs.pid"
PORT_FILE="$RUN_DIR/port"
ENV_FILE="$SERVICES_DIR/s3.env"
LOCK_FILE="$SERVICES_DIR/.s3.lock"

ACCESS_KEY_ID=quantus
SECRET_ACCESS_KEY=quantus-secret-key-for-tests
REGION=us-east-1
BUCKET=quantus-test

READY_TIMEOUT=${QUANTUS_S3_READY_TIMEOUT:-30}
STOP_TIMEOUT=15
INSTALL_LOCK_TIMEOUT=1800 # a concurrent caller may be building s3s-fs (2-4 min on 2 cores)
# sha256 of the empty body: s3s insists on x-amz-content-sha256, which curl omits.
EMPTY_SHA256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855

log() { printf 's3.sh: %s\n' "$*" >&2; }
die() {
    printf 's3.sh: ERROR: %s\n' "$*" >&2
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
    # apt output to stderr: stdout is reserved for the env lines.
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"; } >&2 ||
        die "apt-get install $* failed; install it manually"
}

# curl signs requests itself (--aws-sigv4, curl >= 7.75).
ensure_curl() {
    command -v curl >/dev/null || apt_install curl
    curl --help all 2>/dev/null | grep -F -- '--aws-sigv4' >/dev/null ||
        die "$(command -v curl) is too old for --aws-sigv4 (need curl >= 7.75)"
}

installed_version() {
    [[ -x "$BIN" ]] || return 1
    "$BIN" --version 2>/dev/null | awk '{ print $2 }'
}

# Build s3s-fs into $INSTALL_DIR once; concurrent callers wait for the builder.
ensure_binary() {
    [[ "$(installed_version || true)" == "$S3S_FS_VERSION" ]] && return
    mkdir -p "$(dirname "$INSTALL_DIR")"
    exec 8>"$INSTALL_LOCK"
    flock -w "$INSTALL_LOCK_TIMEOUT" 8 || die "timed out waiting for $INSTALL_LOCK (another s3s-fs build?)"
    if [[ "$(installed_version || true)" == "$S3S_FS_VERSION" ]]; then
        exec 8>&-
        return
    fi
    local cargo
    if ! cargo="$(command -v cargo)"; then
        # rustup's default location, in case ~/.cargo/bin is not on this shell's PATH.
        cargo="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin/cargo"
        [[ -x "$cargo" ]] ||
            die "cargo not found (PATH or $cargo): s3s-fs is built from crates.io with cargo install; install a Rust toolchain first"
    fi

    local tmp="$INSTALL_DIR.partial" build_log="$INSTALL_LOG" started=$SECONDS
    rm -rf "$tmp"
    log "building s3s-fs $S3S_FS_VERSION from crates.io into $INSTALL_DIR (one-off, 2-4 min on 2 cores; log: $build_log)"
    # Own target dir (not the project's CARGO_TARGET_DIR: no lock contention with a
    # concurrent project build), removed afterwards. `binary` is the feature that
    # builds the s3s-fs executable; --locked uses the crate's published Cargo.lock.
    if ! (cd "$(dirname "$INSTALL_DIR")" && CARGO_TARGET_DIR="$tmp/target" "$cargo" install "s3s-fs@$S3S_FS_VERSION" \
        --locked --features binary --root "$tmp" --force) >"$build_log" 2>&1 9>&- 8>&-; then
        log "---- last 40 lines of $build_log ----"
        tail -n 40 "$build_log" >&2 || true
        log "---- end of log ----"
        rm -rf "$tmp"
        die "cargo install s3s-fs@$S3S_FS_VERSION failed (needs crates.io access and a recent enough rustc; see above)"
    fi
    rm -rf "$tmp/target"
    [[ -x "$tmp/bin/s3s-fs" ]] || die "cargo install finished but $tmp/bin/s3s-fs is missing"
    # Swap in the complete install last: a half-finished build is never used.
    rm -rf "$INSTALL_DIR"
    mv "$tmp" "$INSTALL_DIR"
    [[ "$(installed_version || true)" == "$S3S_FS_VERSION" ]] ||
        die "installed $BIN reports version '$("$BIN" --version 2>&1 || true)', expected $S3S_FS_VERSION"
    log "built s3s-fs $S3S_FS_VERSION in $((SECONDS - started))s"
    exec 8>&-
}

# Ask the kernel for a free port (bind to port 0); fall back to scanning from
# 59014 with bash's /dev/tcp when python3 is unavailable.
free_port() {
    local port
    if command -v python3 >/dev/null &&
        port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' 2>/dev/null)" &&
        [[ -n "$port" ]]; then
        echo "$port"
        return
    fi
    for ((port = 59014; port < 60014; port++)); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    die "no free TCP port found in 59014-60013"
}

# Is the pid in $PID_FILE alive and really our server (guards against pid reuse)?
server_pid() {
    local pid
    [[ -f "$PID_FILE" ]] || return 1
    pid="$(cat "$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -F "$DATA_DIR" >/dev/null || return 1
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

is_running() {
    local pid
    pid="$(server_pid)" && [[ -f "$PORT_FILE" ]] && pid_listens_on "$pid" "$(cat "$PORT_FILE")"
}

endpoint() {
    echo "http://127.0.0.1:$(cat "$PORT_FILE")"
}

env_lines() {
    cat <<EOF
S3_ENDPOINT=$(endpoint)
S3_ACCESS_KEY_ID=$ACCESS_KEY_ID
S3_SECRET_ACCESS_KEY=$SECRET_ACCESS_KEY
S3_REGION=$REGION
S3_BUCKET=$BUCKET
EOF
}

write_env() {
    env_lines >"$ENV_FILE.tmp.$$"
    mv -f "$ENV_FILE.tmp.$$" "$ENV_FILE"
    cat "$ENV_FILE"
}

# SigV4-signed request; prints the HTTP status code (000 if no answer).
#   s3_status METHOD PATH [SECRET]
s3_status() {
    local method=(-X "$1")
    # `-X HEAD` would make curl wait for a body that never comes; -I does HEAD right.
    [[ "$1" != HEAD ]] || method=(-I)
    curl -s -o /dev/null -w '%{http_code}' --max-time 10 "${method[@]}" \
        -H "x-amz-content-sha256: $EMPTY_SHA256" \
        --aws-sigv4 "aws:amz:$REGION:s3" --user "$ACCESS_KEY_ID:${3:-$SECRET_ACCESS_KEY}" \
        "$(endpoint)$2" 2>/dev/null || true
}

# Create the bucket unless it exists, then prove the credentials we hand out
# work and that a wrong secret is refused (the server really checks signatures).
ensure_bucket() {
    local code
    code="$(s3_status HEAD "/$BUCKET")"
    if [[ "$code" == 404 ]]; then
        code="$(s3_status PUT "/$BUCKET")"
        # 409: a concurrent creator won; fine.
        [[ "$code" == 200 || "$code" == 409 ]] || die "creating bucket $BUCKET failed: HTTP $code (log: $LOG_FILE)"
        log "created bucket $BUCKET"
        code="$(s3_status HEAD "/$BUCKET")"
    fi
    [[ "$code" == 200 ]] || die "HEAD /$BUCKET with the test credentials answered HTTP $code, expected 200 (log: $LOG_FILE)"
    code="$(s3_status HEAD "/$BUCKET" "not-$SECRET_ACCESS_KEY")"
    [[ "$code" == 403 ]] || die "a request signed with a wrong secret answered HTTP $code, expected 403: the server does not check signatures"
}

stop_server() {
    local pid
    if pid="$(server_pid)"; then
        log "stopping s3s-fs (pid/pgid $pid)"
        # The server runs in its own session/process group (setsid): signal the group.
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + STOP_TIMEOUT))
        while kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS >= deadline)); then
                log "s3s-fs did not exit within ${STOP_TIMEOUT}s; sending SIGKILL"
                kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
                sleep 0.5
                break
            fi
            sleep 0.2
        done
    fi
    rm -rf "$RUN_DIR"
    rmdir "$S3_DIR" 2>/dev/null || true # only if the binary cache lives elsewhere
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

# One attempt at launch + wait on a fresh port. Sets PORT_TAKEN=1 when the port
# was grabbed by someone else between choosing and binding (caller retries);
# dies on any other failure. Deliberately not signalled via the return code:
# calling it in `if` would disable `set -e` inside it.
PORT_TAKEN=0
try_start() {
    PORT_TAKEN=0
    local port pid
    port="$(free_port)"

    rm -rf "$RUN_DIR"
    mkdir -p "$DATA_DIR"
    echo "$port" >"$PORT_FILE"

    log "starting s3s-fs $S3S_FS_VERSION on 127.0.0.1:$port (data in $DATA_DIR)"
    # setsid: own session + process group, so `stop` can kill the whole group and
    # the server survives the caller's terminal/CI step. No job control here, so
    # setsid does not fork and $! is the server pid (== pgid). The loop closes every
    # descriptor above 2: our flock descriptors (8, 9) must not be held by the
    # long-running server, nor any pipe inherited from the caller (a CI runner may
    # wait for it to close).
    (
        cd "$RUN_DIR"
        for fd in /proc/self/fd/*; do
            fd="${fd##*/}"
            if [[ "$fd" =~ ^[0-9]+$ ]] && ((fd > 2)); then
                eval "exec $fd>&-" 2>/dev/null || true
            fi
        done
        exec setsid nohup "$BIN" --host 127.0.0.1 --port "$port" \
            --access-key "$ACCESS_KEY_ID" --secret-key "$SECRET_ACCESS_KEY" \
            "$DATA_DIR" </dev/null >>"$LOG_FILE" 2>&1
    ) &
    pid=$!
    echo "$pid" >"$PID_FILE"

    local deadline=$((SECONDS + READY_TIMEOUT)) code
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            if grep -qiE 'address already in use|AddrInUse' "$LOG_FILE" 2>/dev/null; then
                log "port $port was taken meanwhile; retrying with another port"
                PORT_TAKEN=1
                return 0
            fi
            fail_start "s3s-fs exited during startup"
        fi
        if pid_listens_on "$pid" "$port"; then
            # Any S3 answer (an error for the unsigned request included) means it serves.
            code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$port/" 2>/dev/null || true)"
            [[ "$code" =~ ^[1-5][0-9][0-9]$ ]] && return 0
        fi
        ((SECONDS < deadline)) || fail_start "s3s-fs not serving on 127.0.0.1:$port within ${READY_TIMEOUT}s"
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
    # Before taking the state lock: the build may take minutes and has its own lock.
    ensure_binary
    lock_state
    if is_running; then
        log "already running (pid $(cat "$PID_FILE"), $(endpoint))"
        ensure_bucket
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
            ensure_bucket
            trap - EXIT
            log "ready after $((SECONDS - started))s (s3s-fs $S3S_FS_VERSION, log: $LOG_FILE)"
            write_env
            return
        fi
        log "start attempt $attempt failed"
    done
    die "s3s-fs could not be started after 3 attempts (see $LOG_FILE)"
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
        env_lines
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
