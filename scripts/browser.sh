#!/usr/bin/env bash
# Headless Chromium and Playwright for the browser tests (tests/browser).
#
#   scripts/browser.sh   # install what is missing; print CHROMIUM=<path> on stdout
#
# Chromium comes from Debian's packages (Playwright's own browser download is not used);
# playwright-core from the npm registry at the version in tests/browser/package-lock.json.
# Fails loudly when either cannot be installed: the browser tests must never be skipped.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$SCRIPT_DIR")"
LOCK_FILE="$REPO_DIR/.services/.browser.lock"
mkdir -p "$(dirname "$LOCK_FILE")"

# Tests may call this concurrently; one installer at a time.
exec 9>"$LOCK_FILE"
flock 9

chromium_path() {
    command -v chromium || command -v chromium-browser || true
}

if [ -z "$(chromium_path)" ]; then
    echo "installing Debian's chromium" >&2
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -q chromium >&2 || {
        $SUDO apt-get update -q >&2
        $SUDO apt-get install -y -q chromium >&2
    }
fi
CHROMIUM="$(chromium_path)"
if [ -z "$CHROMIUM" ]; then
    echo "chromium could not be installed" >&2
    exit 1
fi

# Installed again whenever the lockfile changed since the last install (a stamp of its digest),
# so a dependency added later (axe-core) is never missing from an older checkout's modules.
BROWSER_DIR="$REPO_DIR/tests/browser"
STAMP="$BROWSER_DIR/node_modules/.quantus-lock-sha256"
WANT="$(sha256sum "$BROWSER_DIR/package-lock.json" | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "installing the browser tests' packages (npm ci: playwright-core, axe-core)" >&2
    (cd "$BROWSER_DIR" && npm ci --no-audit --no-fund >&2)
    echo "$WANT" >"$STAMP"
fi

echo "CHROMIUM=$CHROMIUM"
