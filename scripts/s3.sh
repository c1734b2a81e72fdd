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

SERVICE=s3
SERVER=s3s-fs
# shellcheck source-path=SCRIPTDIR source=lib/service.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/service.sh"

S3S_FS_VERSION="${QUANTUS_S3S_FS_VERSION:-0.14.1}"

S3_DIR="$SERVICES_DIR/s3"
# Binary cache: survives `stop`, so only the very first start pays for the build.
# Outside the clone by default (like Kafka's jars), so a fresh clone (CI) does not rebuild it.
INSTALL_DIR="${QUANTUS_S3_INSTALL_DIR:-$CACHE_DIR/s3s-fs-$S3S_FS_VERSION}"
BIN="$INSTALL_DIR/bin/s3s-fs"
# Next to the cache, so clones sharing QUANTUS_S3_INSTALL_DIR share the lock too.
INSTALL_LOCK="$INSTALL_DIR.lock"
INSTALL_LOG="$INSTALL_DIR.log"
# Server state: deleted by `stop`.
RUN_DIR="$S3_DIR/run"
STATE_DIR="$RUN_DIR"
DATA_DIR="$RUN_DIR/data"
LOG_FILE="$RUN_DIR/s3s-fs.log"
PID_FILE="$RUN_DIR/s3s-fs.pid"
PORT_FILE="$RUN_DIR/port"
ENV_FILE="$SERVICES_DIR/s3.env"
LOCK_FILE="$SERVICES_DIR/.s3.lock"
STOPPED_NOTE=" (built binary kept in $INSTALL_DIR)"

ACCESS_KEY_ID=quantus
SECRET_ACCESS_KEY=quantus-secret-key-for-tests
REGION=us-east-1
BUCKET=quantus-test

READY_TIMEOUT=${QUANTUS_S3_READY_TIMEOUT:-30}
STOP_TIMEOUT=15
INSTALL_LOCK_TIMEOUT=1800 # a concurrent caller may be building s3s-fs (2-4 min on 2 cores)
# sha256 of the empty body: s3s insists on x-amz-content-sha256, which curl omits.
EMPTY_SHA256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855

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

installed() {
    [[ "$(installed_version || true)" == "$S3S_FS_VERSION" ]]
}

# Builds s3s-fs into $INSTALL_DIR (under install_once's lock).
build() {
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
        show_log "$build_log" 40
        rm -rf "$tmp"
        die "cargo install s3s-fs@$S3S_FS_VERSION failed (needs crates.io access and a recent enough rustc; see above)"
    fi
    rm -rf "$tmp/target"
    [[ -x "$tmp/bin/s3s-fs" ]] || die "cargo install finished but $tmp/bin/s3s-fs is missing"
    # Swap in the complete install last: a half-finished build is never used.
    rm -rf "$INSTALL_DIR"
    mv "$tmp" "$INSTALL_DIR"
    installed ||
        die "installed $BIN reports version '$("$BIN" --version 2>&1 || true)', expected $S3S_FS_VERSION"
    log "built s3s-fs $S3S_FS_VERSION in $((SECONDS - started))s"
}

running_pid() {
    server_pid "$DATA_DIR"
}

is_running() {
    local pid
    pid="$(running_pid)" && [[ -f "$PORT_FILE" ]] && pid_listens_on "$pid" "$(cat "$PORT_FILE")"
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

stop_service() {
    stop_running
    rm -rf "$RUN_DIR"
    rmdir "$S3_DIR" 2>/dev/null || true # only if the binary cache lives elsewhere
    rm -f "$ENV_FILE"
}

# Serving: our pid listens on the port and gives any S3 answer (an error for the
# unsigned request included).
serves() {
    local code
    pid_listens_on "$SPAWNED_PID" "$1" || return 1
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$1/" 2>/dev/null || true)"
    [[ "$code" =~ ^[1-5][0-9][0-9]$ ]]
}

# One attempt at launch + wait on a fresh port (see retry_start).
try_start() {
    local port
    port="$(free_ports 1 59014)"

    rm -rf "$RUN_DIR"
    mkdir -p "$DATA_DIR"
    echo "$port" >"$PORT_FILE"

    log "starting s3s-fs $S3S_FS_VERSION on 127.0.0.1:$port (data in $DATA_DIR)"
    spawn_detached "$RUN_DIR" "$BIN" --host 127.0.0.1 --port "$port" \
        --access-key "$ACCESS_KEY_ID" --secret-key "$SECRET_ACCESS_KEY" "$DATA_DIR"
    wait_serving "$SPAWNED_PID" "$port" 0.2 'address already in use|AddrInUse' serves \
        "s3s-fs not serving on 127.0.0.1:$port within ${READY_TIMEOUT}s"
}

after_start() {
    ensure_bucket
}

cmd_start() {
    ensure_curl
    # Before taking the state lock: the build may take minutes and has its own lock.
    install_once installed "$INSTALL_LOCK" "$INSTALL_LOCK_TIMEOUT" build
    start_server "s3s-fs $S3S_FS_VERSION"
}

service_main "$@"
