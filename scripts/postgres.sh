#!/usr/bin/env bash
# Throwaway PostgreSQL 15 cluster for tests.
#
#   scripts/postgres.sh start   # start (or reuse) the cluster, print DATABASE_URL=...
#   scripts/postgres.sh env     # print DATABASE_URL=... if running, else exit 1
#   scripts/postgres.sh stop    # stop the cluster and delete its files
#
# stdout carries exactly one line (DATABASE_URL=...) so callers can `eval`/source
# it; every other message goes to stderr.
#
# Environment:
#   QUANTUS_SERVICES_DIR  state dir (default: <repo>/.services)
#   QUANTUS_PG_BIN        PostgreSQL bin dir (default: /usr/lib/postgresql/15/bin)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$SCRIPT_DIR")"
SERVICES_DIR="${QUANTUS_SERVICES_DIR:-$REPO_DIR/.services}"
PG_DIR="$SERVICES_DIR/postgres"
DATA_DIR="$PG_DIR/data"
SOCK_DIR="$PG_DIR/sock"
LOG_FILE="$PG_DIR/postgres.log"
PORT_FILE="$PG_DIR/port"
ENV_FILE="$SERVICES_DIR/postgres.env"
LOCK_FILE="$SERVICES_DIR/.postgres.lock"
PG_BIN="${QUANTUS_PG_BIN:-/usr/lib/postgresql/15/bin}"
PG_USER=postgres # OS user that owns the cluster when we are root
DB_NAME=quantus
DB_USER=quantus
DB_PASSWORD=quantus
READY_TIMEOUT=60

log() { printf 'postgres.sh: %s\n' "$*" >&2; }
die() {
    printf 'postgres.sh: ERROR: %s\n' "$*" >&2
    exit 1
}

usage() {
    echo "usage: $0 start|stop|env" >&2
    exit 2
}

# PostgreSQL refuses to run as root, so as root we run its binaries as the
# `postgres` OS user; as any other user we simply run them directly.
as_pg() {
    if [[ $EUID -eq 0 ]]; then
        runuser -u "$PG_USER" -- "$@"
    else
        "$@"
    fi
}

ensure_binaries() {
    if [[ -x "$PG_BIN/initdb" && -x "$PG_BIN/pg_ctl" && -x "$PG_BIN/pg_isready" && -x "$PG_BIN/psql" ]]; then
        return
    fi
    log "PostgreSQL 15 binaries not found in $PG_BIN; trying apt-get install postgresql-15"
    if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null; then
        die "PostgreSQL 15 is not installed and cannot be installed automatically (need root + apt-get). Install postgresql-15 or set QUANTUS_PG_BIN."
    fi
    # Send apt output to stderr: stdout is reserved for the env line.
    if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql-15; } >&2; then
        die "apt-get install postgresql-15 failed; install PostgreSQL 15 manually or set QUANTUS_PG_BIN."
    fi
    [[ -x "$PG_BIN/initdb" ]] || die "postgresql-15 installed but $PG_BIN/initdb is still missing"
}

# Ask the kernel for a free port (bind to port 0); fall back to scanning from
# 55432 with bash's /dev/tcp when python3 is unavailable.
free_port() {
    local port
    if command -v python3 >/dev/null &&
        port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' 2>/dev/null)" &&
        [[ -n "$port" ]]; then
        echo "$port"
        return
    fi
    for ((port = 55432; port < 56432; port++)); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    die "no free TCP port found in 55432-56431"
}

url_for_port() {
    echo "DATABASE_URL=postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$1/$DB_NAME"
}

is_running() {
    [[ -f "$DATA_DIR/PG_VERSION" && -f "$PORT_FILE" ]] || return 1
    as_pg "$PG_BIN/pg_ctl" status -D "$DATA_DIR" >/dev/null 2>&1 || return 1
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$(cat "$PORT_FILE")" -t 5 >/dev/null 2>&1
}

write_env() {
    local line
    line="$(url_for_port "$(cat "$PORT_FILE")")"
    printf '%s\n' "$line" >"$ENV_FILE"
    printf '%s\n' "$line"
}

stop_cluster() {
    if [[ -f "$DATA_DIR/PG_VERSION" ]]; then
        if as_pg "$PG_BIN/pg_ctl" status -D "$DATA_DIR" >/dev/null 2>&1; then
            log "stopping cluster in $DATA_DIR"
            as_pg "$PG_BIN/pg_ctl" stop -D "$DATA_DIR" -m fast -w -t 60 >&2 ||
                as_pg "$PG_BIN/pg_ctl" stop -D "$DATA_DIR" -m immediate -w -t 30 >&2 ||
                die "could not stop the cluster in $DATA_DIR"
        fi
    fi
    rm -rf "$PG_DIR"
    rm -f "$ENV_FILE"
}

# Dump the server log, kill the half-started server and abort.
fail_start() {
    log "---- $LOG_FILE ----"
    cat "$LOG_FILE" >&2 2>/dev/null || true
    log "---- end of log ----"
    as_pg "$PG_BIN/pg_ctl" stop -D "$DATA_DIR" -m immediate >/dev/null 2>&1 || true
    die "$1 (server log above)"
}

# One attempt at init + start on a freshly chosen port. Sets PORT_TAKEN=1 when
# the port was grabbed by someone else between choosing and binding (caller
# retries); dies on any other failure. Deliberately not signalled via the
# return code: calling it in `if` would disable `set -e` inside it.
PORT_TAKEN=0
try_start() {
    PORT_TAKEN=0
    local port
    port="$(free_port)"

    rm -rf "$PG_DIR"
    mkdir -p "$DATA_DIR" "$SOCK_DIR"
    if [[ $EUID -eq 0 ]]; then
        chown -R "$PG_USER:" "$PG_DIR"
        # The postgres user must be able to reach its data dir through every parent.
        runuser -u "$PG_USER" -- test -x "$PG_DIR" -a -w "$PG_DIR" ||
            die "user '$PG_USER' cannot traverse to $PG_DIR (a parent directory is not world-executable); set QUANTUS_SERVICES_DIR to a traversable location"
    fi
    chmod 700 "$DATA_DIR"

    log "initdb in $DATA_DIR"
    # Superuser `postgres` only reachable via the private unix socket (trust);
    # TCP on 127.0.0.1 requires a password (scram), like production.
    if ! as_pg "$PG_BIN/initdb" -D "$DATA_DIR" -U postgres -E UTF8 --locale=C \
        --auth-local=trust --auth-host=scram-sha-256 >"$PG_DIR/initdb.log" 2>&1; then
        cat "$PG_DIR/initdb.log" >&2
        die "initdb failed"
    fi

    cat >"$DATA_DIR/pg_hba.conf" <<EOF
# Generated by scripts/postgres.sh
local   all  all                 trust
host    all  all  127.0.0.1/32   scram-sha-256
EOF
    cat >>"$DATA_DIR/postgresql.conf" <<EOF

# --- scripts/postgres.sh test settings ---
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$SOCK_DIR'
max_connections = 200
fsync = on
logging_collector = off
log_min_messages = warning
EOF
    echo "$port" >"$PORT_FILE"
    [[ $EUID -ne 0 ]] || chown -R "$PG_USER:" "$PG_DIR"

    log "starting on 127.0.0.1:$port"
    # pg_ctl -w returns non-zero as soon as the postmaster exits, or after -t seconds.
    # 9>&-: the server must not inherit (and hold forever) our flock descriptor.
    if ! as_pg "$PG_BIN/pg_ctl" start -D "$DATA_DIR" -l "$LOG_FILE" -w -t "$READY_TIMEOUT" >&2 9>&-; then
        if grep -q 'Address already in use' "$LOG_FILE" 2>/dev/null; then
            log "port $port was taken meanwhile; retrying with another port"
            as_pg "$PG_BIN/pg_ctl" stop -D "$DATA_DIR" -m immediate >/dev/null 2>&1 || true
            PORT_TAKEN=1
            return 0
        fi
        fail_start "pg_ctl start failed"
    fi
    # Belt and braces: the TCP listener must answer, bounded by the same timeout.
    local deadline=$((SECONDS + READY_TIMEOUT))
    until "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -t 2 >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail_start "PostgreSQL did not become ready on 127.0.0.1:$port within ${READY_TIMEOUT}s"
        sleep 0.5
    done
}

provision() {
    local port psql_admin
    port="$(cat "$PORT_FILE")"
    psql_admin=("$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK_DIR" -p "$port" -U postgres -d postgres)
    # CREATEDB lets tests create scratch databases if they want to.
    as_pg "${psql_admin[@]}" >&2 <<EOF || die "could not create role/database $DB_NAME"
DO \$\$BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER') THEN
    CREATE ROLE $DB_USER LOGIN CREATEDB PASSWORD '$DB_PASSWORD';
  END IF;
END\$\$;
SELECT 'CREATE DATABASE $DB_NAME OWNER $DB_USER'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB_NAME')\gexec
EOF
    # Prove the URL we are about to hand out actually works over TCP.
    PGPASSWORD="$DB_PASSWORD" "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$port" -U "$DB_USER" -d "$DB_NAME" \
        -c 'select 1' >/dev/null || die "cannot connect as $DB_USER over TCP on port $port"
}

cmd_start() {
    ensure_binaries
    mkdir -p "$SERVICES_DIR"
    # Serialise concurrent `start`/`stop` calls (e.g. parallel test runners).
    exec 9>"$LOCK_FILE"
    flock -w 120 9 || die "timed out waiting for $LOCK_FILE"

    if is_running; then
        log "already running (data dir $DATA_DIR)"
        write_env
        return
    fi
    if [[ -d "$PG_DIR" ]]; then
        log "removing stale cluster state in $PG_DIR"
        stop_cluster
    fi

    local attempt
    for attempt in 1 2 3; do
        try_start
        if ((PORT_TAKEN == 0)); then
            provision
            log "ready (log: $LOG_FILE)"
            write_env
            return
        fi
        log "start attempt $attempt failed"
    done
    die "PostgreSQL could not be started after 3 attempts (see $LOG_FILE)"
}

cmd_stop() {
    mkdir -p "$SERVICES_DIR"
    exec 9>"$LOCK_FILE"
    flock -w 120 9 || die "timed out waiting for $LOCK_FILE"
    if [[ ! -d "$PG_DIR" ]]; then
        log "not running"
        rm -f "$ENV_FILE"
        return
    fi
    [[ -x "$PG_BIN/pg_ctl" ]] || die "$PG_BIN/pg_ctl missing; cannot stop cluster in $PG_DIR"
    stop_cluster
    log "stopped"
}

cmd_env() {
    [[ -x "$PG_BIN/pg_ctl" ]] || exit 1
    if is_running; then
        url_for_port "$(cat "$PORT_FILE")"
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
