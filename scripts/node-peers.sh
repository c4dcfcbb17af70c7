#!/usr/bin/env bash
# Installs the npm test peers (tests/node: Azurite, Azure Storage's
# emulator, and Azure's SDK that makes its containers) from the npm registry
# into $RAFTKV_NODE_DIR (default /var/tmp/raftkv-node) with `npm ci`, exactly
# as package-lock.json pins them. An install of the same lock file is kept,
# so only the first run downloads (about 30 s).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${RAFTKV_NODE_DIR:-/var/tmp/raftkv-node}

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "node-peers: Node.js and npm are not installed: install them (Debian: apt-get install nodejs npm); the npm registry must be reachable" >&2
  exit 1
fi
mkdir -p "$dir"
cp "$root/tests/node/create-container.js" "$dir/"
if [ -x "$dir/node_modules/.bin/azurite-blob" ] && cmp -s "$root/tests/node/package-lock.json" "$dir/package-lock.json"; then
  exit 0
fi
echo "node-peers: installing tests/node's packages from the npm registry into $dir" >&2
cp "$root/tests/node/package.json" "$root/tests/node/package-lock.json" "$dir/"
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
