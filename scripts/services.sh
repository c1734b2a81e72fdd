#!/usr/bin/env bash
# Start/stop all test backing services (PostgreSQL + Kafka + S3 + Stripe's
# stripe-mock) in one go.
#
#   scripts/services.sh start   # prints DATABASE_URL=..., KAFKA_BROKERS=..., the five
#                               # S3_*=... lines and STRIPE_API_BASE=...
#   scripts/services.sh env     # same lines, if all are running
#   scripts/services.sh stop    # stops all; services that are not running are fine
#
# `start` also writes these lines to .services/env, usable as
#   set -a; . .services/env; set +a     (or docker --env-file / dotenv).
# All chatter goes to stderr; stdout is exactly the env lines.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$SCRIPT_DIR")"
SERVICES_DIR="${QUANTUS_SERVICES_DIR:-$REPO_DIR/.services}"
ENV_FILE="$SERVICES_DIR/env"

log() { printf 'services.sh: %s\n' "$*" >&2; }

cmd_start() {
    mkdir -p "$SERVICES_DIR"
    local tmp pg_pid kafka_pid s3_pid stripe_pid pg_rc=0 kafka_rc=0 s3_rc=0 stripe_rc=0
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064 # expand $tmp now, it is local
    trap "rm -rf '$tmp'" EXIT
    # Start all at once: they are independent and each takes several seconds.
    "$SCRIPT_DIR/postgres.sh" start >"$tmp/pg" &
    pg_pid=$!
    "$SCRIPT_DIR/kafka.sh" start >"$tmp/kafka" &
    kafka_pid=$!
    "$SCRIPT_DIR/s3.sh" start >"$tmp/s3" &
    s3_pid=$!
    "$SCRIPT_DIR/stripe-mock.sh" start >"$tmp/stripe" &
    stripe_pid=$!
    wait "$pg_pid" || pg_rc=$?
    wait "$kafka_pid" || kafka_rc=$?
    wait "$s3_pid" || s3_rc=$?
    wait "$stripe_pid" || stripe_rc=$?
    if ((pg_rc != 0 || kafka_rc != 0 || s3_rc != 0 || stripe_rc != 0)); then
        ((pg_rc == 0)) || log "ERROR: postgres.sh start failed (exit $pg_rc)"
        ((kafka_rc == 0)) || log "ERROR: kafka.sh start failed (exit $kafka_rc)"
        ((s3_rc == 0)) || log "ERROR: s3.sh start failed (exit $s3_rc)"
        ((stripe_rc == 0)) || log "ERROR: stripe-mock.sh start failed (exit $stripe_rc)"
        log "services that did start are left running; '$0 stop' stops them"
        exit 1
    fi
    # Each script prints exactly one KEY=VALUE line; be strict so a stray line
    # cannot end up in the env file.
    grep -x 'DATABASE_URL=.*' "$tmp/pg" >/dev/null || {
        log "ERROR: unexpected output from postgres.sh: $(cat "$tmp/pg")"
        exit 1
    }
    grep -x 'KAFKA_BROKERS=.*' "$tmp/kafka" >/dev/null || {
        log "ERROR: unexpected output from kafka.sh: $(cat "$tmp/kafka")"
        exit 1
    }
    # s3.sh prints exactly five lines, all S3_*=...
    [[ "$(grep -c -x 'S3_[A-Z_]*=.*' "$tmp/s3")" == 5 && "$(wc -l <"$tmp/s3")" == 5 ]] || {
        log "ERROR: unexpected output from s3.sh: $(cat "$tmp/s3")"
        exit 1
    }
    # stripe-mock.sh prints exactly one line.
    [[ "$(grep -c -x 'STRIPE_API_BASE=http://127\.0\.0\.1:[0-9]*' "$tmp/stripe")" == 1 && "$(wc -l <"$tmp/stripe")" == 1 ]] || {
        log "ERROR: unexpected output from stripe-mock.sh: $(cat "$tmp/stripe")"
        exit 1
    }
    cat "$tmp/pg" "$tmp/kafka" "$tmp/s3" "$tmp/stripe" >"$ENV_FILE.tmp"
    mv -f "$ENV_FILE.tmp" "$ENV_FILE"
    cat "$ENV_FILE"
}

cmd_env() {
    "$SCRIPT_DIR/postgres.sh" env
    "$SCRIPT_DIR/kafka.sh" env
    "$SCRIPT_DIR/s3.sh" env
    "$SCRIPT_DIR/stripe-mock.sh" env
}

cmd_stop() {
    local rc=0
    # Try all even if one fails.
    "$SCRIPT_DIR/stripe-mock.sh" stop || rc=1
    "$SCRIPT_DIR/s3.sh" stop || rc=1
    "$SCRIPT_DIR/kafka.sh" stop || rc=1
    "$SCRIPT_DIR/postgres.sh" stop || rc=1
    rm -f "$ENV_FILE"
    ((rc == 0)) || log "ERROR: at least one service failed to stop"
    return "$rc"
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
env) cmd_env ;;
*)
    echo "usage: $0 start|stop|env" >&2
    exit 2
    ;;
esac
