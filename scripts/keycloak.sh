#!/usr/bin/env bash
# Keycloak, the peer the token benchmarks are measured against (issue 18): the
# distribution from Maven Central (org.keycloak:keycloak-quarkus-dist), run in dev mode
# (embedded H2) on 127.0.0.1 under a Java 21+ runtime, with one realm and one confidential
# client for the client-credentials grant.
#
#   scripts/keycloak.sh start   # start (or reuse) the server and its bench realm, print the env lines
#   scripts/keycloak.sh env     # print the env lines if running, else exit 1
#   scripts/keycloak.sh stop    # stop the server and delete its state (the download is kept)
#
# stdout of start/env carries exactly these lines (callers can `eval`/source them):
#   KEYCLOAK_URL=http://127.0.0.1:<port>
#   KEYCLOAK_TOKEN_URL=<url>/realms/bench/protocol/openid-connect/token
#   KEYCLOAK_INTROSPECT_URL=<token url>/introspect
#   KEYCLOAK_CLIENT_ID=bench
#   KEYCLOAK_CLIENT_SECRET=<random, made at start>
# every other message goes to stderr.
#
# Environment:
#   QUANTUS_SERVICES_DIR              state dir (default: <repo>/.services)
#   QUANTUS_KEYCLOAK_VERSION          distribution version (default: 26.5.6)
#   QUANTUS_KEYCLOAK_JAVA_HOME        a Java 21+ (default: the first of temurin-25, 21, ... found
#                                     under /usr/lib/jvm)
#   QUANTUS_KEYCLOAK_READY_TIMEOUT    seconds to wait for the server (default: 480: a first
#                                     start on 2 busy cores builds Quarkus' augmentation)
#   QUANTUS_KEYCLOAK_INSTALL_DIR      where the distribution is unpacked (default:
#                                     ~/.cache/quantus/keycloak-<version>)
set -euo pipefail

SERVICE=keycloak
# shellcheck source-path=SCRIPTDIR source=lib/service.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/service.sh"

KEYCLOAK_VERSION="${QUANTUS_KEYCLOAK_VERSION:-26.5.6}"
DIST_URL="https://repo1.maven.org/maven2/org/keycloak/keycloak-quarkus-dist/$KEYCLOAK_VERSION/keycloak-quarkus-dist-$KEYCLOAK_VERSION.tar.gz"

KC_DIR="$SERVICES_DIR/keycloak"
INSTALL_DIR="${QUANTUS_KEYCLOAK_INSTALL_DIR:-$CACHE_DIR/keycloak-$KEYCLOAK_VERSION}"
INSTALL_MARKER="$INSTALL_DIR/.complete"
INSTALL_LOCK="$INSTALL_DIR.lock"
RUN_DIR="$KC_DIR/run"
STATE_DIR="$RUN_DIR"
LOG_FILE="$RUN_DIR/keycloak.log"
PID_FILE="$RUN_DIR/keycloak.pid"
PORT_FILE="$RUN_DIR/port"
SECRET_FILE="$RUN_DIR/client-secret"
ADMIN_FILE="$RUN_DIR/admin-password"
ENV_FILE="$SERVICES_DIR/keycloak.env"
LOCK_FILE="$SERVICES_DIR/.keycloak.lock"
STOPPED_NOTE=" (distribution kept in $INSTALL_DIR)"

READY_TIMEOUT=${QUANTUS_KEYCLOAK_READY_TIMEOUT:-480}
STOP_TIMEOUT=30
INSTALL_LOCK_TIMEOUT=900
REALM=bench
CLIENT_ID=bench

ensure_tools() {
    command -v curl >/dev/null || apt_install curl
    command -v jq >/dev/null || apt_install jq
}

# Keycloak 26 needs Java 21 or newer; the machine's default may be 17.
JAVA_HOME_KC=""
find_java() {
    local candidate
    for candidate in "${QUANTUS_KEYCLOAK_JAVA_HOME:-}" /usr/lib/jvm/temurin-25-jdk-amd64 \
        /usr/lib/jvm/temurin-21-jdk-amd64 /usr/lib/jvm/java-25-openjdk-amd64 /usr/lib/jvm/java-21-openjdk-amd64; do
        if [[ -n "$candidate" && -x "$candidate/bin/java" ]]; then
            JAVA_HOME_KC="$candidate"
            return
        fi
    done
    die "no Java 21+ found (set QUANTUS_KEYCLOAK_JAVA_HOME; Keycloak $KEYCLOAK_VERSION does not run on Java 17)"
}

installed() {
    [[ -x "$INSTALL_DIR/bin/kc.sh" && -f "$INSTALL_MARKER" ]]
}

download() {
    local tmp="$INSTALL_DIR.partial" started=$SECONDS
    rm -rf "$tmp"
    mkdir -p "$tmp"
    log "downloading Keycloak $KEYCLOAK_VERSION from Maven Central (one-off, about 200 MB)"
    curl -fsSL --retry 3 "$DIST_URL" 9>&- 8>&- | tar xz -C "$tmp" --strip-components=1 ||
        die "download of $DIST_URL failed"
    [[ -x "$tmp/bin/kc.sh" ]] || die "the archive has no bin/kc.sh"
    echo "$DIST_URL" >"$tmp/.complete"
    rm -rf "$INSTALL_DIR"
    mv "$tmp" "$INSTALL_DIR"
    log "unpacked Keycloak $KEYCLOAK_VERSION in $((SECONDS - started))s"
}

base_url() {
    echo "http://127.0.0.1:$(cat "$PORT_FILE")"
}

running_pid() {
    [[ -f "$PORT_FILE" ]] || return 1
    server_pid "--http-port=$(cat "$PORT_FILE")"
}

# The realm's discovery document answers once the bench realm exists.
realm_ready() {
    [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
        "$(base_url)/realms/$REALM/.well-known/openid-configuration" 2>/dev/null || true)" == 200 ]]
}

is_running() {
    local pid
    pid="$(running_pid)" && group_listens_on "$pid" "$(cat "$PORT_FILE")" && realm_ready
}

env_lines() {
    local url token_url
    url="$(base_url)"
    token_url="$url/realms/$REALM/protocol/openid-connect/token"
    echo "KEYCLOAK_URL=$url"
    echo "KEYCLOAK_TOKEN_URL=$token_url"
    echo "KEYCLOAK_INTROSPECT_URL=$token_url/introspect"
    echo "KEYCLOAK_CLIENT_ID=$CLIENT_ID"
    echo "KEYCLOAK_CLIENT_SECRET=$(cat "$SECRET_FILE")"
}

stop_service() {
    stop_running
    rm -rf "$RUN_DIR"
    rmdir "$KC_DIR" 2>/dev/null || true
    rm -f "$ENV_FILE"
}

# The master realm's discovery document: the server is up (the bench realm comes after).
serves() {
    local code=000
    # kc.sh runs Java as its child: the listener is in the group, not the spawned shell.
    if group_listens_on "$SPAWNED_PID" "$1"; then
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
            "http://127.0.0.1:$1/realms/master/.well-known/openid-configuration" 2>/dev/null || true)"
    fi
    PROBE_DETAIL=" (last HTTP status: $code)"
    [[ "$code" == 200 ]]
}

try_start() {
    local ports port management
    ports="$(free_ports 2 59212)"
    read -r port management <<<"$ports"
    rm -rf "$RUN_DIR"
    mkdir -p "$RUN_DIR/data"
    echo "$port" >"$PORT_FILE"
    head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$ADMIN_FILE"
    log "starting Keycloak $KEYCLOAK_VERSION (dev mode, H2) on 127.0.0.1:$port with $JAVA_HOME_KC"
    # Dev mode keeps its H2 database under the distribution's data/ unless told otherwise:
    # --db-url points it into this run's state, so the shared install stays clean.
    spawn_detached "$RUN_DIR" env JAVA_HOME="$JAVA_HOME_KC" \
        KC_BOOTSTRAP_ADMIN_USERNAME=admin KC_BOOTSTRAP_ADMIN_PASSWORD="$(cat "$ADMIN_FILE")" \
        "$INSTALL_DIR/bin/kc.sh" start-dev --http-host=127.0.0.1 --http-port="$port" \
        --http-management-port="$management" \
        --db-url="jdbc:h2:file:$RUN_DIR/data/keycloakdb;NON_KEYWORDS=VALUE" \
        --log-level=warn
    wait_serving "$SPAWNED_PID" "$port" 1 'address already in use' serves \
        "Keycloak not answering on 127.0.0.1:$port within ${READY_TIMEOUT}s"
}

# The bench realm and its confidential client (service accounts on: client_credentials),
# through the admin REST API with the bootstrap admin's token.
after_start() {
    realm_ready && [[ -s "$SECRET_FILE" ]] && return
    local url admin_token secret
    url="$(base_url)"
    admin_token="$(curl -fsS --max-time 30 -d grant_type=password -d client_id=admin-cli \
        -d username=admin --data-urlencode "password=$(cat "$ADMIN_FILE")" \
        "$url/realms/master/protocol/openid-connect/token" | jq -r .access_token)" ||
        fail_start "no admin token from Keycloak"
    secret="$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
    curl -fsS --max-time 60 -H "Authorization: Bearer $admin_token" -H 'Content-Type: application/json' \
        -d "{\"realm\":\"$REALM\",\"enabled\":true}" "$url/admin/realms" >/dev/null ||
        fail_start "creating the realm $REALM failed"
    curl -fsS --max-time 60 -H "Authorization: Bearer $admin_token" -H 'Content-Type: application/json' \
        -d "{\"clientId\":\"$CLIENT_ID\",\"enabled\":true,\"publicClient\":false,\"secret\":\"$secret\",
             \"serviceAccountsEnabled\":true,\"standardFlowEnabled\":false,\"directAccessGrantsEnabled\":false}" \
        "$url/admin/realms/$REALM/clients" >/dev/null || fail_start "creating the client $CLIENT_ID failed"
    echo "$secret" >"$SECRET_FILE"
    realm_ready || fail_start "the realm $REALM does not answer after its creation"
}

cmd_start() {
    ensure_tools
    find_java
    install_once installed "$INSTALL_LOCK" "$INSTALL_LOCK_TIMEOUT" download
    start_server "Keycloak $KEYCLOAK_VERSION"
}

service_main "$@"
