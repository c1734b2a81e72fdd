#!/usr/bin/env bash
# Refreshes the front-end assets embedded in the binary from the npm registry, at the versions
# pinned in scripts/vendor/package-lock.json: Swagger UI for the API reference page
# (/docs/api). Run after changing the version in scripts/vendor/package.json; commit the result.
set -euo pipefail
cd "$(dirname "$0")/vendor"
npm ci --no-audit --no-fund --ignore-scripts >&2
out=../../api/assets/vendor/swagger-ui
mkdir -p "$out"
for f in swagger-ui-bundle.js swagger-ui.css LICENSE NOTICE; do
  cp node_modules/swagger-ui-dist/$f "$out/$f"
done
# The bundle's last line names a source map that is not shipped.
sed -i '/^\/\/# sourceMappingURL=/d' "$out/swagger-ui-bundle.js"
sed -i 's#/\*\# sourceMappingURL=[^*]*\*/##' "$out/swagger-ui.css"
echo "swagger-ui-dist $(node -p 'require("./node_modules/swagger-ui-dist/package.json").version')" > "$out/VERSION"
