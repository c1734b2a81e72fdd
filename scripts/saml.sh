#!/usr/bin/env bash
# The independent SAML service provider's tools (tests/saml): Debian's xmlsec1 (the binary
# pysaml2 verifies XML signatures with) and the pinned Python packages.
#
#   scripts/saml.sh   # install what is missing; print XMLSEC1=<path> on stdout
#
# Fails loudly when either cannot be installed: the SAML interop tests must never be skipped.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$SCRIPT_DIR")"
LOCK_FILE="$REPO_DIR/.services/.saml.lock"
mkdir -p "$(dirname "$LOCK_FILE")"

# Tests may call this concurrently; one installer at a time.
exec 9>"$LOCK_FILE"
flock 9

if ! command -v xmlsec1 >/dev/null; then
    echo "installing Debian's xmlsec1" >&2
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -q xmlsec1 >&2 || {
        $SUDO apt-get update -q >&2
        $SUDO apt-get install -y -q xmlsec1 >&2
    }
fi
XMLSEC1="$(command -v xmlsec1 || true)"
if [ -z "$XMLSEC1" ]; then
    echo "xmlsec1 could not be installed" >&2
    exit 1
fi

if ! python3 -c 'import saml2' 2>/dev/null; then
    echo "installing pysaml2 (tests/saml/requirements.txt)" >&2
    python3 -m pip install --quiet --disable-pip-version-check -r "$REPO_DIR/tests/saml/requirements.txt" >&2
fi
echo "XMLSEC1=$XMLSEC1"
