# shellcheck shell=bash
# shellcheck disable=SC2154,SC2034 # LOG_FILE, PID_FILE, ... come from the sourcing script, CACHE_DIR, ... go to it
#
# What the throwaway test services (scripts/postgres.sh, kafka.sh, s3.sh, stripe-mock.sh)
# share: paths, messages, apt installs, one-off builds under a lock, free ports, the state
# lock, detached servers in their own process group, readiness waits with port-race
# retries, stopping, and the env file. Sourced, never run; each script keeps only what is
# its service's own.
#
# Before sourcing, a script sets SERVICE (its name, e.g. kafka: messages say "kafka.sh:");
# SERVER may name the process in messages (default: SERVICE).
# The helpers below then read these, which the script sets after sourcing:
#   LOCK_FILE      the state lock (serialises start/stop/env of parallel callers)
#   ENV_FILE       where start writes the KEY=VALUE lines env_lines prints
#   LOG_FILE       the server's log; PID_FILE its pid (== its process group)
#   PORT_FILE      the port it serves on
#   STATE_DIR      its state, deleted by stop
#   READY_TIMEOUT  seconds a start may take; STOP_TIMEOUT seconds a stop may take
# and these functions: env_lines (the KEY=VALUE lines), is_running, stop_service (stop and
# delete the state); for servers it launches itself, try_start (one start attempt; see
# retry_start) and running_pid (the live server's pid; see server_pid).

SERVICES_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SCRIPT_DIR="$(dirname "$SERVICES_LIB_DIR")"
REPO_DIR="$(dirname "$SCRIPT_DIR")"
SERVICES_DIR="${QUANTUS_SERVICES_DIR:-$REPO_DIR/.services}"
# Downloads and builds that survive `stop` (and fresh clones).
CACHE_DIR="${QUANTUS_CACHE_DIR:-${HOME:-/root}/.cache/quantus}"

log() { printf '%s.sh: %s\n' "$SERVICE" "$*" >&2; }
die() {
    printf '%s.sh: ERROR: %s\n' "$SERVICE" "$*" >&2
    exit 1
}

# The commands a script answers: USAGE lists them ("start|stop|env" by default).
usage() {
    echo "usage: $0 ${USAGE:-start|stop|env}" >&2
    exit 2
}

# Runs cmd_<first argument> with the rest, if the script has it.
service_main() {
    local command="${1:-}"
    if [[ ! "$command" =~ ^[a-z]+$ ]] || ! declare -F "cmd_$command" >/dev/null; then
        usage
    fi
    shift
    "cmd_$command" "$@"
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

# Prints the last LINES lines of FILE to stderr between markers (`all` for the whole file).
show_log() {
    local file="$1" lines="$2"
    if [[ "$lines" == all ]]; then
        log "---- $file ----"
        cat "$file" >&2 2>/dev/null || true
    else
        log "---- last $lines lines of $file ----"
        tail -n "$lines" "$file" >&2 2>/dev/null || true
    fi
    log "---- end of log ----"
}

# Makes a download or build once, under a lock, for every clone sharing the cache:
#   install_once IS_DONE LOCK TIMEOUT INSTALL
# Returns at once when the IS_DONE function says so; otherwise waits for the lock (another
# caller may be installing), asks again, and runs the INSTALL function. fd 8 holds the lock;
# INSTALL must keep it from long-running children (`8>&-`) and leave IS_DONE true.
install_once() {
    local is_done="$1" lock="$2" timeout="$3" install="$4"
    "$is_done" && return
    mkdir -p "$(dirname "$lock")"
    exec 8>"$lock"
    flock -w "$timeout" 8 || die "timed out waiting for $lock (another $SERVICE install?)"
    if ! "$is_done"; then
        "$install"
        "$is_done" || die "install for $SERVICE did not complete (lock $lock)"
    fi
    exec 8>&-
}

# COUNT distinct free ports on 127.0.0.1, space-separated: from the kernel (all bound at
# once, so they differ), else scanned from FALLBACK with bash's /dev/tcp.
free_ports() {
    local count="$1" fallback="$2"
    if command -v python3 >/dev/null &&
        python3 - "$count" 2>/dev/null <<'EOF'; then
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
        return
    fi
    local port found=()
    for ((port = fallback; port < fallback + 1000 && ${#found[@]} < count; port++)); do
        if ! port_open "$port"; then
            found+=("$port")
        fi
    done
    ((${#found[@]} == count)) || die "no free TCP ports found in $fallback-$((fallback + 999))"
    echo "${found[*]}"
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Takes the state lock on fd 9 (TIMEOUT seconds, default 120): serialises concurrent
# start/stop (e.g. parallel test runners).
lock_state() {
    mkdir -p "$SERVICES_DIR"
    exec 9>"$LOCK_FILE"
    flock -w "${1:-120}" 9 || die "timed out waiting for $LOCK_FILE"
}

# The pid in PID_FILE if it is alive and really our server: its command line holds NEEDLE
# (guards against pid reuse).
server_pid() {
    local needle="$1" pid
    [[ -f "$PID_FILE" ]] || return 1
    pid="$(cat "$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -F -- "$needle" >/dev/null || return 1
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

# Starts COMMAND... in DIR, detached, output appended to LOG_FILE; its pid goes to
# PID_FILE and SPAWNED_PID. setsid: own session + process group, so a stop can kill the
# whole group and the server survives the caller's terminal/CI step. No job control here,
# so setsid does not fork and $! is the server pid (== pgid). The loop closes every
# descriptor above 2: our flock descriptors (8, 9) must not be held by the long-running
# server, nor any pipe inherited from the caller (a test harness reading our stdout waits
# for it to close).
SPAWNED_PID=""
# Whether a process of the group `$1` leads (spawn_detached's setsid makes the server its own
# group) listens on TCP port `$2`: for servers started through a wrapper script that runs the
# real process as its child (Keycloak's kc.sh), where the leader holds no socket.
group_listens_on() {
    local member
    for member in $(pgrep -g "$1" 2>/dev/null); do
        pid_listens_on "$member" "$2" && return 0
    done
    return 1
}

spawn_detached() {
    local dir="$1"
    shift
    (
        cd "$dir" || exit 1
        for fd in /proc/self/fd/*; do
            fd="${fd##*/}"
            if [[ "$fd" =~ ^[0-9]+$ ]] && ((fd > 2)); then
                eval "exec $fd>&-" 2>/dev/null || true
            fi
        done
        exec setsid nohup "$@" </dev/null >>"$LOG_FILE" 2>&1
    ) &
    SPAWNED_PID=$!
    echo "$SPAWNED_PID" >"$PID_FILE"
}

# SIGKILL to the process group of the server (running_pid), if any: a half-started one.
kill_unready() {
    local pid
    if pid="$(running_pid)"; then
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
}

# Stops the server (running_pid), if any, with stop_group.
stop_running() {
    local pid
    if pid="$(running_pid)"; then
        stop_group "$pid"
    fi
}

# Ends the process group of PID: SIGTERM, SIGKILL after STOP_TIMEOUT seconds. Polls
# every STOP_POLL seconds (default 0.2).
stop_group() {
    local pid="$1" poll="${STOP_POLL:-0.2}"
    log "stopping ${SERVER:-$SERVICE} (pid/pgid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "${SERVER:-$SERVICE} did not exit within ${STOP_TIMEOUT}s; sending SIGKILL"
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            sleep "$poll"
            sleep "$poll"
            break
        fi
        sleep "$poll"
    done
}

# Shows the end of LOG_FILE (FAIL_LOG_LINES, default 60), kills the half-started server
# (kill_unready, where there is a running_pid) and dies with MESSAGE.
fail_start() {
    show_log "$LOG_FILE" "${FAIL_LOG_LINES:-60}"
    if declare -F running_pid >/dev/null; then kill_unready; fi
    die "$1 (state kept in $STATE_DIR for inspection; '$0 stop' removes it)"
}

# Waits until the server PID answers the PROBE function (with PORT as its argument),
# polling every POLL seconds for READY_TIMEOUT seconds:
#   wait_serving PID PORT POLL IN_USE_ERE PROBE NOT_READY_MESSAGE
# Sets PORT_TAKEN=1 when the server died because its port was taken meanwhile (LOG_FILE
# matches IN_USE_ERE, case-insensitively): the caller retries on fresh ports. Any other
# death or the timeout fails the start; PROBE may put a detail for that message in
# PROBE_DETAIL.
PORT_TAKEN=0
PROBE_DETAIL=""
wait_serving() {
    local pid="$1" port="$2" poll="$3" in_use="$4" probe="$5" not_ready="$6"
    local deadline=$((SECONDS + READY_TIMEOUT))
    PROBE_DETAIL=""
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            if grep -qiE "$in_use" "$LOG_FILE" 2>/dev/null; then
                log "a port was taken meanwhile; retrying with other ports"
                PORT_TAKEN=1
                return 0
            fi
            fail_start "${SERVER:-$SERVICE} exited during startup"
        fi
        if "$probe" "$port"; then
            return 0
        fi
        ((SECONDS < deadline)) || fail_start "$not_ready$PROBE_DETAIL"
        sleep "$poll"
    done
}

# Up to three try_start attempts on fresh ports; returns after the first that took.
# try_start sets PORT_TAKEN=1 when its port was taken between choosing and binding, and
# dies on any other failure. Deliberately not signalled through its return code: calling
# it in `if` would disable `set -e` inside it.
retry_start() {
    local attempt
    for attempt in 1 2 3; do
        PORT_TAKEN=0
        try_start
        if ((PORT_TAKEN == 0)); then
            return 0
        fi
        log "start attempt $attempt failed"
    done
    die "${SERVER:-$SERVICE} could not be started after 3 attempts (see $LOG_FILE)"
}

# Runs the function NAME if the script defines it.
run_hook() {
    if declare -F "$1" >/dev/null; then
        "$1"
    fi
}

# `start` of a server the script launches (try_start): under the state lock, reuse a
# running one, else clear stale state and start one with retries; a half-started one is
# killed (kill_unready) if anything fails. Hooks: before_start (before launching),
# after_start (once it serves, or found running). Prints the env lines.
#   start_server WHAT    (e.g. "Kafka 4.1.1", for the closing message)
start_server() {
    local what="$1" started
    lock_state "${STATE_LOCK_TIMEOUT:-120}"
    if is_running; then
        log "already running (pid $(cat "$PID_FILE"))"
        run_hook after_start
        write_env
        return
    fi
    if [[ -d "$STATE_DIR" ]]; then
        log "removing stale state in $STATE_DIR"
        stop_service
    fi
    run_hook before_start
    trap 'kill_unready' EXIT
    started=$SECONDS
    retry_start
    run_hook after_start
    trap - EXIT
    log "ready after $((SECONDS - started))s ($what, log: $LOG_FILE)"
    write_env
}

# Writes env_lines to ENV_FILE (atomically) and prints them.
write_env() {
    env_lines >"$ENV_FILE.tmp.$$"
    mv -f "$ENV_FILE.tmp.$$" "$ENV_FILE"
    cat "$ENV_FILE"
}

# `env`: the lines if the service runs (is_running), else exit 1.
service_env() {
    if is_running; then
        env_lines
    else
        log "not running"
        exit 1
    fi
}

# `stop`: stops the service (stop_service) and deletes its state; fine if it is not
# running. STOPPED_NOTE is added to the closing message.
service_stop() {
    lock_state "${STATE_LOCK_TIMEOUT:-120}"
    if [[ ! -d "$STATE_DIR" ]]; then
        log "not running"
        rm -f "$ENV_FILE"
        return
    fi
    stop_service
    log "stopped${STOPPED_NOTE:-}"
}

# The commands' defaults; a script may define its own after sourcing.
cmd_env() { service_env; }
cmd_stop() { service_stop; }
