#!/usr/bin/env bash
# The Kubernetes chart's checkers (tests/it/deploy.rs): Helm and kubeconform, and the
# Kubernetes JSON schemas kubeconform validates against.
#
#   scripts/k8s-tools.sh   # install what is missing; print HELM=, KUBECONFORM=, KUBERNETES_SCHEMAS=
#
# Helm and kubeconform are built with `go install` from the Go module proxy at pinned
# versions. kubeconform fetches its schemas from the network by default, which is out of
# reach here: they come instead from PyPI's kubernetes-validate, whose wheel carries the
# schemas generated from each Kubernetes release's OpenAPI document. Fails loudly when any
# of them cannot be installed: the chart's checks must never be skipped.
set -euo pipefail

HELM_VERSION=v4.3.2
KUBECONFORM_VERSION=v0.8.0
# The schemas of Kubernetes 1.25 to 1.37; the test validates against the oldest release
# the chart supports (Chart.yaml's kubeVersion) and the newest.
KUBERNETES_VALIDATE_VERSION=1.37.0
KUBERNETES_VERSIONS="1.27.0 1.37.0"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$SCRIPT_DIR")"
CACHE_DIR="${QUANTUS_CACHE_DIR:-${HOME:-/root}/.cache/quantus}/k8s-tools"
BIN_DIR="$CACHE_DIR/bin-helm-$HELM_VERSION-kubeconform-$KUBECONFORM_VERSION"
SCHEMA_DIR="$CACHE_DIR/kubernetes-json-schema-$KUBERNETES_VALIDATE_VERSION"
LOCK_FILE="$REPO_DIR/.services/.k8s-tools.lock"
mkdir -p "$(dirname "$LOCK_FILE")" "$CACHE_DIR"

log() { printf 'k8s-tools.sh: %s\n' "$*" >&2; }
die() {
    printf 'k8s-tools.sh: ERROR: %s\n' "$*" >&2
    exit 1
}

# Tests may call this concurrently; one installer at a time.
exec 9>"$LOCK_FILE"
flock -w 1800 9 || die "timed out waiting for $LOCK_FILE"

command -v go >/dev/null || die "the go command is missing: Helm and kubeconform are built from the Go module proxy"

if [ ! -x "$BIN_DIR/helm" ]; then
    log "building Helm $HELM_VERSION (go install helm.sh/helm/v4/cmd/helm)"
    GOBIN="$BIN_DIR" go install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" >&2 ||
        die "go install helm.sh/helm/v4/cmd/helm@$HELM_VERSION failed"
fi
if [ ! -x "$BIN_DIR/kubeconform" ]; then
    log "building kubeconform $KUBECONFORM_VERSION (go install github.com/yannh/kubeconform/cmd/kubeconform)"
    GOBIN="$BIN_DIR" go install "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION" >&2 ||
        die "go install github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION failed"
fi

schemas_present() {
    local version
    for version in $KUBERNETES_VERSIONS; do
        [ -f "$SCHEMA_DIR/v$version-local-strict/deployment-apps-v1.json" ] || return 1
    done
}
if ! schemas_present; then
    log "fetching the Kubernetes JSON schemas (PyPI kubernetes-validate $KUBERNETES_VALIDATE_VERSION)"
    rm -rf "$SCHEMA_DIR.tmp"
    download="$(mktemp -d)"
    trap 'rm -rf "$download"' EXIT
    python3 -m pip download --quiet --disable-pip-version-check --no-deps \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" -d "$download" >&2 ||
        die "pip download kubernetes-validate==$KUBERNETES_VALIDATE_VERSION failed"
    # Only the strict schemas of the versions tested (the wheel holds 26 folders). Their
    # `$id`s and `$ref`s name kubernetes.io, which kubeconform would fetch: without the `$id`
    # and with the definitions' path made relative, every reference resolves to the file
    # beside the schema.
    # shellcheck disable=SC2086 # one argument per version
    python3 - "$download"/kubernetes_validate-*.whl "$SCHEMA_DIR.tmp" $KUBERNETES_VERSIONS <<'PY' ||
import json, os, sys, zipfile
wheel, target, versions = sys.argv[1], sys.argv[2], sys.argv[3:]
prefix = "kubernetes_validate/kubernetes-json-schema/"
wanted = tuple(f"{prefix}v{v}-local-strict/" for v in versions)
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if not name.startswith(wanted) or name.endswith("/"):
            continue
        schema = json.loads(z.read(name))
        schema.pop("$id", None)
        text = json.dumps(schema).replace('"/api/_definitions.json#', '"_definitions.json#')
        path = os.path.join(target, name[len(prefix):])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
PY
        die "unpacking the schemas failed"
    rm -rf "$SCHEMA_DIR"
    mv "$SCHEMA_DIR.tmp" "$SCHEMA_DIR"
    schemas_present || die "the wheel holds no schemas for Kubernetes $KUBERNETES_VERSIONS"
fi

echo "HELM=$BIN_DIR/helm"
echo "KUBECONFORM=$BIN_DIR/kubeconform"
echo "KUBERNETES_SCHEMAS=$SCHEMA_DIR"
echo "KUBERNETES_VERSIONS=$KUBERNETES_VERSIONS"
