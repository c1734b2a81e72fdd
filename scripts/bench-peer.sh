#!/usr/bin/env bash
# Quantus beside Keycloak under the same load (issue 18): client_credentials tokens/s and
# introspections/s, each measured with the same load generator (oha, from crates.io) against
# Keycloak (scripts/keycloak.sh: dev mode, embedded H2), Quantus embedded (SQLite) and Quantus
# on PostgreSQL (scripts/postgres.sh; no Kafka: the token path does not touch it), in
# interleaved rounds so that the machine's other work falls on all of them alike.
#
#   scripts/bench-peer.sh [tokens|introspect|all]     (default: all)
#
# Every round prints the machine's load before it and the CPU other processes took during it
# (scripts/lib/measure.sh); the summary gives each target's median rate over the rounds and
# its ratio to Keycloak's. Only answers with status 200 count: a shed (503) or refused request
# is reported beside the rate, never counted in it.
#
# Environment (defaults in brackets):
#   QUANTUS_BIN        the quantus binary [$CARGO_TARGET_DIR/release/quantus, built if missing]
#   CARGO_TARGET_DIR   build dir [<repo>/target]
#   PEER_TARGETS       which servers ["keycloak embedded postgres"]
#   PEER_ROUNDS        interleaved rounds per figure [3]
#   PEER_SECONDS       seconds per round [40]
#   PEER_CONNECTIONS   concurrent connections [16]
#   PEER_WARMUP        seconds of unrecorded load on each target before its first round (the
#                      JVM's JIT, Quantus' caches) [15]
#   OHA                the oha binary [PATH, else built once with cargo install into
#                      ~/.cache/quantus/oha-<version>]
#   OHA_VERSION        the oha version cargo installs [1.16.0]
#   BENCH_WAIT_IDLE=1  wait for a calm machine before each round (scripts/lib/measure.sh)
#   BENCH_OUT          folder for logs and summary.tsv [a new /tmp/quantus-peer.XXXXXX]
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$SCRIPT_DIR")"
# shellcheck source-path=SCRIPTDIR source=lib/measure.sh
. "$SCRIPT_DIR/lib/measure.sh"

MODE="${1:-all}"
case "$MODE" in
tokens | introspect | all) ;;
*)
    echo "usage: $0 [tokens|introspect|all]" >&2
    exit 2
    ;;
esac

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_DIR/target}"
BIN="${QUANTUS_BIN:-$CARGO_TARGET_DIR/release/quantus}"
PEER_TARGETS="${PEER_TARGETS:-keycloak embedded postgres}"
PEER_ROUNDS="${PEER_ROUNDS:-3}"
PEER_SECONDS="${PEER_SECONDS:-40}"
PEER_CONNECTIONS="${PEER_CONNECTIONS:-16}"
PEER_WARMUP="${PEER_WARMUP:-15}"
OHA_VERSION="${OHA_VERSION:-1.16.0}"
CACHE_DIR="${QUANTUS_CACHE_DIR:-${HOME:-/root}/.cache/quantus}"
BENCH_OUT="${BENCH_OUT:-$(mktemp -d /tmp/quantus-peer.XXXXXX)}"
mkdir -p "$BENCH_OUT"
SUMMARY="$BENCH_OUT/summary.tsv"
: >"$SUMMARY"

log() { printf 'bench-peer.sh: %s\n' "$*" >&2; }
die() {
    printf '\nbench-peer.sh: ERROR: %s\n' "$*" >&2
    exit 1
}
section() { printf '\n===== %s =====\n' "$*"; }

for tool in curl jq python3; do
    command -v "$tool" >/dev/null || die "$tool is required"
done

ensure_oha() {
    if [[ -n "${OHA:-}" ]]; then
        return
    fi
    if OHA="$(command -v oha)"; then
        return
    fi
    OHA="$CACHE_DIR/oha-$OHA_VERSION/bin/oha"
    if [[ ! -x "$OHA" ]]; then
        log "building oha $OHA_VERSION with cargo install (one-off)"
        cargo install oha --locked --version "$OHA_VERSION" --root "$CACHE_DIR/oha-$OHA_VERSION" >&2 ||
            die "cargo install oha failed"
    fi
}

ensure_quantus() {
    if [[ ! -x "$BIN" ]]; then
        [[ -z "${QUANTUS_BIN:-}" ]] || die "QUANTUS_BIN=$QUANTUS_BIN is not an executable"
        log "building the release binary into $CARGO_TARGET_DIR (a long build on 2 cores)"
        (cd "$REPO_DIR" && cargo build --release --locked --bin quantus) >&2 || die "release build failed"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---------------------------------------------------------------------------------------------
# The servers: each target fills its TOKEN_URL, INTROSPECT_URL, CLIENT_ID and CLIENT_SECRET.

declare -A TOKEN_URL INTROSPECT_URL CLIENT_ID CLIENT_SECRET SERVER_PID
QUANTUS_PIDS=()
DATA_DIRS=()
CREATED_DB=""
PG_ADMIN_URL=""

cleanup() {
    local pid dir
    for pid in "${QUANTUS_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    for dir in "${DATA_DIRS[@]}"; do rm -rf "$dir"; done
    if [[ -n "$CREATED_DB" ]]; then
        psql "$PG_ADMIN_URL" -X -q -c "DROP DATABASE IF EXISTS $CREATED_DB" >/dev/null 2>&1 ||
            log "could not drop $CREATED_DB"
    fi
}
trap cleanup EXIT

start_keycloak() {
    local line
    while IFS= read -r line; do
        case "$line" in
        KEYCLOAK_TOKEN_URL=*) TOKEN_URL[keycloak]="${line#*=}" ;;
        KEYCLOAK_INTROSPECT_URL=*) INTROSPECT_URL[keycloak]="${line#*=}" ;;
        KEYCLOAK_CLIENT_ID=*) CLIENT_ID[keycloak]="${line#*=}" ;;
        KEYCLOAK_CLIENT_SECRET=*) CLIENT_SECRET[keycloak]="${line#*=}" ;;
        esac
    done < <("$SCRIPT_DIR/keycloak.sh" start)
    [[ -n "${TOKEN_URL[keycloak]:-}" ]] || die "scripts/keycloak.sh start printed no token URL"
    # kc.sh execs the JVM: the pid it recorded is the server's.
    SERVER_PID[keycloak]="$(cat "${QUANTUS_SERVICES_DIR:-$REPO_DIR/.services}/keycloak/run/keycloak.pid")"
    echo "keycloak: $(grep -m1 "^KEYCLOAK_URL=" "${QUANTUS_SERVICES_DIR:-$REPO_DIR/.services}/keycloak.env"), dev mode (H2), scripts/keycloak.sh"
}

# start_quantus TARGET [DATABASE_URL]: `quantus serve` on a fresh store; its bootstrap
# service principal is the benchmark's client.
start_quantus() {
    local target="$1" database_url="${2:-}" dir port url pid deadline
    dir="$(mktemp -d "/tmp/quantus-peer-$target.XXXXXX")"
    DATA_DIRS+=("$dir")
    port="$(free_port)"
    url="http://127.0.0.1:$port"
    if [[ -n "$database_url" ]]; then
        env -u KAFKA_BROKERS DATABASE_URL="$database_url" QUANTUS_DATA_DIR="$dir" \
            QUANTUS_LISTEN="127.0.0.1:$port" QUANTUS_LOG="${QUANTUS_LOG:-warn}" \
            "$BIN" serve >"$BENCH_OUT/$target.log" 2>&1 &
    else
        env -u DATABASE_URL -u KAFKA_BROKERS QUANTUS_DATA_DIR="$dir" \
            QUANTUS_LISTEN="127.0.0.1:$port" QUANTUS_LOG="${QUANTUS_LOG:-warn}" \
            "$BIN" serve >"$BENCH_OUT/$target.log" 2>&1 &
    fi
    pid=$!
    QUANTUS_PIDS+=("$pid")
    SERVER_PID[$target]="$pid"
    deadline=$((SECONDS + 180))
    until [[ -s "$dir/bootstrap-client.json" ]] &&
        curl -fs -o /dev/null --max-time 2 "$url/healthz"; do
        kill -0 "$pid" 2>/dev/null || {
            tail -n 30 "$BENCH_OUT/$target.log" >&2
            die "quantus serve ($target) exited"
        }
        ((SECONDS < deadline)) || die "quantus serve ($target) not ready within 180 s"
        sleep 0.5
    done
    TOKEN_URL[$target]="$url/oauth2/token"
    INTROSPECT_URL[$target]="$url/oauth2/introspect"
    CLIENT_ID[$target]="$(jq -r .client_id "$dir/bootstrap-client.json")"
    CLIENT_SECRET[$target]="$(jq -r .client_secret "$dir/bootstrap-client.json")"
    echo "$target: $("$BIN" --version 2>/dev/null || echo quantus) on $url${database_url:+ (PostgreSQL)}"
}

start_postgres_target() {
    local line base
    while IFS= read -r line; do
        case "$line" in DATABASE_URL=*) base="${line#DATABASE_URL=}" ;; esac
    done < <("$SCRIPT_DIR/postgres.sh" start)
    [[ -n "${base:-}" ]] || die "scripts/postgres.sh start printed no DATABASE_URL"
    PG_ADMIN_URL="$base"
    CREATED_DB="bench_peer_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
    psql "$PG_ADMIN_URL" -X -q -c "CREATE DATABASE $CREATED_DB" >&2 || die "cannot create $CREATED_DB"
    start_quantus postgres "${base%/*}/$CREATED_DB"
}

# ---------------------------------------------------------------------------------------------
# One round: oha for PEER_SECONDS against one target; prints and records the rate of 200s.

token_for() { # target
    curl -fsS --max-time 30 -u "${CLIENT_ID[$1]}:${CLIENT_SECRET[$1]}" -d grant_type=client_credentials \
        "${TOKEN_URL[$1]}" | jq -er .access_token
}

oha_post() { # seconds target url body
    "$OHA" -z "${1}s" -c "$PEER_CONNECTIONS" --no-tui --output-format json -m POST \
        -H 'content-type: application/x-www-form-urlencoded' \
        -a "${CLIENT_ID[$2]}:${CLIENT_SECRET[$2]}" -d "$4" "$3"
}

# The introspected token must still be active when a round ends: an expired one answers
# `{"active":false}`, cheaper than the real work.
still_active() { # target body
    [[ "$(curl -fsS --max-time 30 -u "${CLIENT_ID[$1]}:${CLIENT_SECRET[$1]}" -d "$2" "${INTROSPECT_URL[$1]}" |
        jq -r .active)" == true ]] || die "the token introspected against $1 was no longer active at the end of the round"
}

# CPU ticks the target has used so far: its server process (all threads), and for the
# PostgreSQL target the database's processes too (Keycloak's H2 and Quantus' SQLite run inside
# their server's process). On a shared machine, requests per CPU-second of the server is the
# figure other people's work does not bend much.
server_ticks() { # target
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v pid="${SERVER_PID[$1]}" -v db="$([[ $1 == postgres ]] && echo 1)" '{
        p = $1; line = $0; sub(/^[0-9]+ \(/, "", line); comm = line; sub(/\) .*/, "", comm)
        sub(/^.*\) /, "", line); split(line, f, " ")
        # f[3] is the process group: Keycloak runs Java as a child of kc.sh, in the same group.
        if (p == pid || f[3] == pid || (db && comm == "postgres")) ticks += f[12] + f[13]
    } END { print ticks + 0 }'
}

round() { # figure target round
    local figure="$1" target="$2" n="$3" url body out ok total rate other ticks cpu per_cpu
    case "$figure" in
    tokens)
        url="${TOKEN_URL[$target]}"
        body="grant_type=client_credentials"
        ;;
    introspect)
        url="${INTROSPECT_URL[$target]}"
        body="token=$(token_for "$target")"
        ;;
    esac
    out="$BENCH_OUT/$figure-$target-$n.json"
    section "$figure, $target, round $n"
    loadavg
    measure_start
    ticks="$(server_ticks "$target")"
    oha_post "$PEER_SECONDS" "$target" "$url" "$body" >"$out" || die "oha failed against $target (see $out)"
    ticks=$(($(server_ticks "$target") - ticks))
    measure_end | tee "$BENCH_OUT/$figure-$target-$n.load"
    [[ "$figure" != introspect ]] || still_active "$target" "$body"
    ok="$(jq '.statusCodeDistribution["200"] // 0' "$out")"
    total="$(jq '[.statusCodeDistribution[]] | add // 0' "$out")"
    rate="$(jq -r --argjson ok "$ok" '($ok / .summary.total) | floor' "$out")"
    other="$(sed -n 's/^during: .*(\([0-9]*%\) of .*/\1/p' "$BENCH_OUT/$figure-$target-$n.load")"
    cpu="$(awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t / hz }')"
    per_cpu="$(awk -v ok="$ok" -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.0f", (t > 0 ? ok * hz / t : 0) }')"
    printf '%s %s/s: %s of %s answers 200 (p50 %.1f ms, p99 %.1f ms; others %s); server CPU %s s: %s per CPU-second\n' \
        "$figure" "$rate" "$ok" "$total" \
        "$(jq '.latencyPercentiles.p50 * 1000' "$out")" "$(jq '.latencyPercentiles.p99 * 1000' "$out")" \
        "$(jq -c '.statusCodeDistribution | del(."200")' "$out")" "$cpu" "$per_cpu"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$figure" "$target" "$n" "$rate" "$other" "$per_cpu" >>"$SUMMARY"
}

summary() { # figure
    section "$1: median over $PEER_ROUNDS rounds of ${PEER_SECONDS} s, $PEER_CONNECTIONS connections"
    awk -F'\t' -v figure="$1" '
        $1 == figure { rates[$2] = rates[$2] " " $4; others[$2] = others[$2] " " $5; cpus[$2] = cpus[$2] " " $6 }
        END {
            for (t in rates) {
                n = split(rates[t], r, " ")
                for (i = 2; i <= n; i++) for (j = i; j > 1 && r[j - 1] + 0 > r[j] + 0; j--) { x = r[j]; r[j] = r[j - 1]; r[j - 1] = x }
                med[t] = (n % 2) ? r[(n + 1) / 2] : (r[n / 2] + r[n / 2 + 1]) / 2
                n = split(cpus[t], r, " ")
                for (i = 2; i <= n; i++) for (j = i; j > 1 && r[j - 1] + 0 > r[j] + 0; j--) { x = r[j]; r[j] = r[j - 1]; r[j - 1] = x }
                per[t] = (n % 2) ? r[(n + 1) / 2] : (r[n / 2] + r[n / 2 + 1]) / 2
            }
            for (t in rates) {
                printf "%-10s %8.0f/s", t, med[t]
                if ("keycloak" in med && t != "keycloak" && med["keycloak"] > 0) printf " (%.2fx Keycloak)", med[t] / med["keycloak"]
                printf "   %6.0f per server CPU-second", per[t]
                if ("keycloak" in per && t != "keycloak" && per["keycloak"] > 0) printf " (%.2fx Keycloak)", per[t] / per["keycloak"]
                printf "   rounds:%s   other CPU:%s\n", rates[t], others[t]
            }
        }' "$SUMMARY"
}

# ---------------------------------------------------------------------------------------------

ensure_oha
ensure_quantus
section "setup ($(nproc) CPUs; results in $BENCH_OUT)"
for target in $PEER_TARGETS; do
    case "$target" in
    keycloak) start_keycloak ;;
    embedded) start_quantus embedded ;;
    postgres) start_postgres_target ;;
    *) die "unknown target $target (keycloak, embedded, postgres)" ;;
    esac
done
echo "oha: $("$OHA" --version)"
if ((PEER_WARMUP > 0)); then
    for target in $PEER_TARGETS; do
        log "warming up $target for ${PEER_WARMUP} s (not recorded)"
        oha_post "$PEER_WARMUP" "$target" "${TOKEN_URL[$target]}" grant_type=client_credentials >/dev/null ||
            die "oha failed against $target during the warm-up"
    done
fi

FIGURES=(tokens introspect)
[[ "$MODE" == all ]] || FIGURES=("$MODE")
for figure in "${FIGURES[@]}"; do
    for ((n = 1; n <= PEER_ROUNDS; n++)); do
        for target in $PEER_TARGETS; do
            round "$figure" "$target" "$n"
        done
    done
done
for figure in "${FIGURES[@]}"; do summary "$figure"; done
echo
echo "summary: $SUMMARY (figure, target, round, rate/s, other processes' CPU share, answers per server CPU-second)"
