#!/usr/bin/env bash
# Refreshes the front-end assets embedded in the binary from the npm registry, at the versions
# pinned in scripts/vendor/package-lock.json: Swagger UI for the API reference page
# (/docs/api) and the noble libraries for the verify page (/verify). Run after changing a
# version in scripts/vendor/package.json; commit the result.
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
# The verify page's cryptography: the noble libraries bundled into one classic script (the
# page loads scripts only from this origin, so no import map, which would be inline).
out=../../api/assets/vendor/noble
mkdir -p "$out"
node_modules/.bin/esbuild noble-entry.js --bundle --minify --format=iife --target=es2020 \
  --legal-comments=none --outfile="$out/noble.js"
for p in post-quantum curves hashes; do
  cp "node_modules/@noble/$p/LICENSE" "$out/LICENSE-$p"
done
node -p '["post-quantum", "curves", "hashes"].map((p) => `@noble/${p} ${require(`./node_modules/@noble/${p}/package.json`).version}`).join("\n")' > "$out/VERSION"
echo "esbuild $(node -p 'require("./node_modules/esbuild/package.json").version') (bundler)" >> "$out/VERSION"
