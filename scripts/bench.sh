#!/usr/bin/env bash
# Throughput of the Quantus event-sourcing spine, plus raw-Postgres baselines.
#
#   scripts/bench.sh [embedded|postgres|pgbench|sweep|all]     (default: all)
#
#   embedded  `quantus bench` on a fresh embedded SQLite store (no services needed)
#   postgres  `quantus bench` on a fresh Postgres database + Kafka (relay -> Kafka -> projection),
#             then the pgbench baselines (scripts/pgbench-append.sql): the serialised append
#             (lock + MAX + INSERT), a plain INSERT without lock, and the serialised append of a
#             batch of $PGBENCH_BATCH rows
#   pgbench   only the pgbench baselines
#   sweep     `quantus bench` on Postgres (no Kafka) and both baselines at each concurrency in
#             $SWEEP: what serialised appends cost as senders are added
#   all       embedded + postgres (+ pgbench baselines); add the sweep with BENCH_SWEEP=1
#
# Every `quantus bench` run and every pgbench run gets its own freshly created database
# (bench_<kind>_<random>), dropped at the end unless BENCH_KEEP_DBS=1. Services come from
# scripts/services.sh (reused if already running; never stopped by this script, because other
# people's tests may be using them). Output goes to the terminal and to $BENCH_OUT.
#
# Environment (defaults in brackets):
#   QUANTUS_BIN        benchmark this binary instead of building one (e.g. a locally patched build)
#   CARGO_TARGET_DIR   build dir [<repo>/target; a separate one avoids waiting on a running build]
#   BENCH_NO_BUILD=1   use the existing $CARGO_TARGET_DIR/release/quantus as is
#   COMMANDS           commands per Postgres `quantus bench` run [20000]
#   CONCURRENCY        senders for the Postgres run [8]
#   SQLITE_COMMANDS    commands for the embedded run [20000]
#   SQLITE_CONCURRENCY senders for the embedded run [8]
#   PGBENCH_CLIENTS    pgbench -c [8];  PGBENCH_JOBS  pgbench -j [2];  PGBENCH_SECONDS  -T [20]
#   PGBENCH_BATCH      rows per transaction of a third baseline, the serialised append of a batch
#                      (lock + MAX + one multi-row INSERT + commit) [16]; 0 or 1: skip it
#   SWEEP              concurrencies for `sweep` ["1 8 32"]
#   BENCH_SWEEP=1      also run the sweep in `all`
#   BENCH_KEEP_DBS=1   keep the scratch databases
#   BENCH_WAIT_IDLE=1  before each measurement wait until under BENCH_IDLE_BUSY [20] percent of
#                      the CPUs are busy (for at most BENCH_IDLE_TIMEOUT [900] s): the machine
#                      may be shared with builds and tests
#   BENCH_OUT          folder for logs and summary.tsv [a new /tmp/quantus-bench.XXXXXX]
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$SCRIPT_DIR")"
PG_BIN="${QUANTUS_PG_BIN:-/usr/lib/postgresql/15/bin}"
PGBENCH_SQL="$SCRIPT_DIR/pgbench-append.sql"

MODE="${1:-all}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_DIR/target}"
COMMANDS="${COMMANDS:-20000}"
CONCURRENCY="${CONCURRENCY:-8}"
SQLITE_COMMANDS="${SQLITE_COMMANDS:-20000}"
SQLITE_CONCURRENCY="${SQLITE_CONCURRENCY:-8}"
PGBENCH_CLIENTS="${PGBENCH_CLIENTS:-8}"
PGBENCH_JOBS="${PGBENCH_JOBS:-2}"
PGBENCH_SECONDS="${PGBENCH_SECONDS:-20}"
PGBENCH_BATCH="${PGBENCH_BATCH:-16}"
SWEEP="${SWEEP:-1 8 32}"
BENCH_OUT="${BENCH_OUT:-$(mktemp -d /tmp/quantus-bench.XXXXXX)}"
mkdir -p "$BENCH_OUT"
SUMMARY="$BENCH_OUT/summary.tsv"
: >"$SUMMARY"
BIN="${QUANTUS_BIN:-$CARGO_TARGET_DIR/release/quantus}"

log() { printf 'bench.sh: %s\n' "$*" >&2; }
die() {
    printf '\nbench.sh: ERROR: %s\n' "$*" >&2
    exit 1
}
section() { printf '\n===== %s =====\n' "$*"; }
# shellcheck source-path=SCRIPTDIR source=lib/measure.sh
. "$SCRIPT_DIR/lib/measure.sh"

case "$MODE" in
embedded | postgres | pgbench | sweep | all) ;;
*)
    echo "usage: $0 [embedded|postgres|pgbench|sweep|all]" >&2
    exit 2
    ;;
esac

FAILED=()
fail_step() {
    printf '\nbench.sh: !!!!! FAILED: %s !!!!!\n' "$*" >&2
    FAILED+=("$*")
}

# ---------------------------------------------------------------------------------------------
# Build

build() {
    if [[ "${BENCH_NO_BUILD:-}" == 1 || -n "${QUANTUS_BIN:-}" ]]; then
        [[ -x "$BIN" ]] || die "$BIN does not exist (BENCH_NO_BUILD=1 / QUANTUS_BIN)"
        log "using existing $BIN (built $(date -u -r "$BIN" '+%F %T UTC'))"
        return
    fi
    section "build (cargo build --release --bin quantus, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    (cd "$REPO_DIR" && cargo build --release --bin quantus) || die "cargo build failed"
    [[ -x "$BIN" ]] || die "build finished but $BIN is missing"
}

# ---------------------------------------------------------------------------------------------
# Services and scratch databases

DATABASE_URL_BASE=""
BROKERS=""
PG_HOST="" PG_PORT="" PG_USER="" PG_PASS="" PG_DB=""
CREATED_DBS=()

services() {
    [[ -n "$DATABASE_URL_BASE" ]] && return
    local before="not running" out line
    if "$SCRIPT_DIR/services.sh" env >/dev/null 2>&1; then
        before="already running (left running afterwards)"
    fi
    section "services ($before)"
    out="$("$SCRIPT_DIR/services.sh" start)" || die "scripts/services.sh start failed: PostgreSQL and/or Kafka did not start (see messages above)"
    while IFS= read -r line; do
        case "$line" in
        DATABASE_URL=*) DATABASE_URL_BASE="${line#DATABASE_URL=}" ;;
        KAFKA_BROKERS=*) BROKERS="${line#KAFKA_BROKERS=}" ;;
        esac
    done <<<"$out"
    [[ -n "$DATABASE_URL_BASE" ]] || die "scripts/services.sh start printed no DATABASE_URL"
    [[ -n "$BROKERS" ]] || die "scripts/services.sh start printed no KAFKA_BROKERS"
    # postgres://user:password@host:port/db
    local re='^postgres(ql)?://([^:@/]+):([^@/]*)@([^:/]+):([0-9]+)/([^?]+)'
    [[ "$DATABASE_URL_BASE" =~ $re ]] || die "cannot parse DATABASE_URL $DATABASE_URL_BASE"
    PG_USER="${BASH_REMATCH[2]}" PG_PASS="${BASH_REMATCH[3]}" PG_HOST="${BASH_REMATCH[4]}"
    PG_PORT="${BASH_REMATCH[5]}" PG_DB="${BASH_REMATCH[6]}"
    echo "DATABASE_URL=$DATABASE_URL_BASE"
    echo "KAFKA_BROKERS=$BROKERS"
    local services_dir="${QUANTUS_SERVICES_DIR:-$REPO_DIR/.services}" kafka_libs=""
    if [[ -f "$services_dir/kafka/kafka.pid" ]]; then
        kafka_libs="$(tr '\0' '\n' <"/proc/$(cat "$services_dir/kafka/kafka.pid")/cmdline" 2>/dev/null | grep -o 'kafka-[0-9][0-9.]*/libs' | head -n 1 || true)"
    fi
    kafka_libs="${kafka_libs%/libs}"
    echo "kafka: ${kafka_libs:-version unknown}, single-node KRaft broker+controller on loopback (scripts/kafka.sh)"
    psql_on "$PG_DB" -Atc "SELECT 'server: ' || version(); SELECT 'fsync=' || current_setting('fsync') || ' synchronous_commit=' || current_setting('synchronous_commit') || ' wal_sync_method=' || current_setting('wal_sync_method') || ' commit_delay=' || current_setting('commit_delay') || ' shared_buffers=' || current_setting('shared_buffers')" ||
        die "cannot run queries on $DATABASE_URL_BASE"
}

psql_on() {
    local db="$1"
    shift
    PGPASSWORD="$PG_PASS" "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$db" "$@"
}

# Creates a fresh database; its name goes to $FRESH_DB (not printed: a subshell would lose
# CREATED_DBS, and with it the cleanup).
FRESH_DB=""
fresh_db() {
    FRESH_DB="bench_${1}_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
    psql_on "$PG_DB" -c "CREATE DATABASE $FRESH_DB" >&2 || die "cannot create database $FRESH_DB"
    CREATED_DBS+=("$FRESH_DB")
}

cleanup() {
    if [[ ${#CREATED_DBS[@]} -gt 0 ]]; then
        if [[ "${BENCH_KEEP_DBS:-}" == 1 ]]; then
            log "kept databases: ${CREATED_DBS[*]}"
        else
            local db
            for db in "${CREATED_DBS[@]}"; do
                psql_on "$PG_DB" -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || log "could not drop $db"
            done
        fi
    fi
    if [[ -n "${EMBEDDED_DIR:-}" ]]; then rm -rf "$EMBEDDED_DIR"; fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
# Runs

# "other CPU N%" from a log's `during:` line.
other_cpu() { sed -n 's/^during: .*(\([0-9]*%\) of .*/other CPU \1/p' "$1" | tail -n 1; }

# record_quantus LABEL LOG: one summary.tsv row per figure `quantus bench` printed.
record_quantus() {
    local label="$1" file="$2" other
    other="$(other_cpu "$file")"
    awk -v label="$label" -v other="$other" -F': *' '
        /^(commands -> store|log -> projection \(store\)|relay -> kafka|kafka -> projection|audit verify \(store\)):/ {
            split($2, a, "/s"); gsub(/ /, "", a[1]);
            n = $2; sub(/.*\(/, "", n); sub(/\).*/, "", n);
            printf "%s\t%s\t%s\t%s; %s\n", label, $1, a[1], n, other
        }' "$file" >>"$SUMMARY"
}

quantus_bench() { # label commands concurrency [args...]
    local label="$1" commands="$2" concurrency="$3"
    shift 3
    local out="$BENCH_OUT/$label.log"
    section "quantus bench: $label"
    loadavg
    echo "+ quantus bench --commands $commands --concurrency $concurrency $*"
    measure_start
    if env -u DATABASE_URL -u KAFKA_BROKERS QUANTUS_LOG="${QUANTUS_LOG:-warn}" \
        "$BIN" bench --commands "$commands" --concurrency "$concurrency" "$@" 2>&1 | tee "$out"; then
        measure_end | tee -a "$out"
        record_quantus "$label" "$out"
    else
        measure_end | tee -a "$out"
        # Keep the figures printed before the failure, marked as such.
        record_quantus "$label (FAILED)" "$out"
        fail_step "quantus bench $label (log: $out)"
    fi
}

run_embedded() {
    EMBEDDED_DIR="$(mktemp -d /tmp/quantus-bench-sqlite.XXXXXX)"
    quantus_bench "embedded-c$SQLITE_CONCURRENCY" "$SQLITE_COMMANDS" "$SQLITE_CONCURRENCY" --data-dir "$EMBEDDED_DIR"
    rm -rf "$EMBEDDED_DIR"
    EMBEDDED_DIR=""
}

run_postgres() { # concurrency with_kafka(0|1)
    local concurrency="$1" kafka="$2" db label args
    services
    fresh_db q
    db="$FRESH_DB"
    args=(--database-url "postgres://$PG_USER:$PG_PASS@$PG_HOST:$PG_PORT/$db")
    label="postgres-c$concurrency"
    if [[ "$kafka" == 1 ]]; then
        args+=(--kafka "$BROKERS")
        label="postgres+kafka-c$concurrency"
    fi
    echo "database: $db"
    quantus_bench "$label" "$COMMANDS" "$concurrency" "${args[@]}"
}

run_pgbench() { # locked(0|1) clients [rows per transaction]
    local locked="$1" clients="$2" rows="${3:-1}" db label out jobs
    services
    fresh_db pgb
    db="$FRESH_DB"
    # The platform's own schema (the `events` table with its keys and append-only trigger),
    # created by quantus itself on the fresh database, so the baseline can never drift from it.
    "$BIN" projections dump organizations \
        --database-url "postgres://$PG_USER:$PG_PASS@$PG_HOST:$PG_PORT/$db" >/dev/null \
        || die "cannot create the quantus schema in $db"
    psql_on "$db" >/dev/null <<'SQL' || die "cannot set up the pgbench database $db"
CREATE SEQUENCE bench_position;
-- A UUIDv7-shaped id: 48-bit millisecond timestamp, then random bits (like Uuid::now_v7).
CREATE FUNCTION bench_uuid7() RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-7' || substr(u, 16)
    FROM (SELECT lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') AS h,
                 gen_random_uuid()::text AS u) s
$$;
-- RFC 3339 in UTC with microseconds and Z, as rfc3339_micros::format writes occurred_at.
CREATE FUNCTION bench_now() RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;
-- OrganizationCreated's payload as `quantus bench` writes it: {"name":"bench W-I"}.
CREATE FUNCTION bench_payload(id text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT '{"name":"bench ' || substr(id, 31, 6) || '"}'
$$;
SQL
    jobs=$((clients < PGBENCH_JOBS ? clients : PGBENCH_JOBS))
    if [[ "$locked" == 1 ]]; then label="pgbench-lock+max+insert"; else label="pgbench-insert-nolock"; fi
    if ((rows > 1)); then label="$label-${rows}rows"; fi
    label="$label-c$clients"
    out="$BENCH_OUT/$label.log"
    section "$label (database $db)"
    loadavg
    echo "+ pgbench -n -M prepared -c $clients -j $jobs -T $PGBENCH_SECONDS -D locked=$locked -D rows=$rows -f scripts/pgbench-append.sql $db"
    measure_start
    if PGPASSWORD="$PG_PASS" "$PG_BIN/pgbench" -n -M prepared -c "$clients" -j "$jobs" -T "$PGBENCH_SECONDS" \
        -D "locked=$locked" -D "rows=$rows" -f "$PGBENCH_SQL" -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" "$db" 2>&1 | tee "$out"; then
        local tps lat count
        measure_end | tee -a "$out"
        tps="$(awk '/^tps = / { printf "%.0f", $3 }' "$out")"
        lat="$(awk '/^latency average = / { print $4 " " $5 }' "$out")"
        count="$(psql_on "$db" -Atc 'SELECT count(*) FROM events')"
        [[ -n "$tps" ]] || fail_step "$label printed no tps"
        echo "rows in events: $count"
        printf '%s\ttps (%s row/txn)\t%s\t%s rows in %ss = %s rows/s, latency avg %s; %s\n' "$label" "$rows" "$tps" "$count" "$PGBENCH_SECONDS" \
            "$(awk -v t="$tps" -v r="$rows" 'BEGIN { printf "%.0f", t * r }')" "$lat" "$(other_cpu "$out")" >>"$SUMMARY"
        if ! grep -q '^number of failed transactions: 0 ' "$out" || grep -qi 'aborted' "$out"; then
            fail_step "$label reported failed or aborted transactions (log: $out)"
        fi
    else
        measure_end | tee -a "$out"
        fail_step "pgbench $label (log: $out)"
    fi
}

run_sweep() {
    local c
    for c in $SWEEP; do
        run_postgres "$c" 0
        run_pgbench 1 "$c"
        run_pgbench 0 "$c"
    done
}

# ---------------------------------------------------------------------------------------------

section "quantus bench.sh $MODE -- $(date -u '+%F %T UTC')"
echo "repo: $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '?') ($(git -C "$REPO_DIR" status --porcelain 2>/dev/null | wc -l) paths modified/untracked)"
echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/^Mem:/ { print $2 }') GiB RAM, kernel $(uname -r)"
echo "filesystem of $REPO_DIR: $(df -T "$REPO_DIR" | awk 'NR == 2 { print $1 " (" $2 ")" }')"
echo "logs: $BENCH_OUT"

[[ "$MODE" == pgbench ]] || build
case "$MODE" in
embedded) run_embedded ;;
postgres)
    run_postgres "$CONCURRENCY" 1
    run_pgbench 1 "$PGBENCH_CLIENTS"
    run_pgbench 0 "$PGBENCH_CLIENTS"
    if ((PGBENCH_BATCH > 1)); then run_pgbench 1 "$PGBENCH_CLIENTS" "$PGBENCH_BATCH"; fi
    ;;
pgbench)
    run_pgbench 1 "$PGBENCH_CLIENTS"
    run_pgbench 0 "$PGBENCH_CLIENTS"
    if ((PGBENCH_BATCH > 1)); then run_pgbench 1 "$PGBENCH_CLIENTS" "$PGBENCH_BATCH"; fi
    ;;
sweep) run_sweep ;;
all)
    run_embedded
    run_postgres "$CONCURRENCY" 1
    run_pgbench 1 "$PGBENCH_CLIENTS"
    run_pgbench 0 "$PGBENCH_CLIENTS"
    if ((PGBENCH_BATCH > 1)); then run_pgbench 1 "$PGBENCH_CLIENTS" "$PGBENCH_BATCH"; fi
    if [[ "${BENCH_SWEEP:-}" == 1 ]]; then run_sweep; fi
    ;;
esac

section "summary (per second; $SUMMARY)"
if [[ -s "$SUMMARY" ]]; then
    column -t -s $'\t' "$SUMMARY" 2>/dev/null || cat "$SUMMARY"
fi
if [[ ${#FAILED[@]} -gt 0 ]]; then
    printf '\nbench.sh: FAILED steps:\n' >&2
    printf '  - %s\n' "${FAILED[@]}" >&2
    exit 1
fi
