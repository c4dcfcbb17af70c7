#!/usr/bin/env bash
# Builds the Go test peers from the Go module proxy, each from its module
# under tests/go (go.mod and go.sum pin every module):
# - etcd 3.5 and 3.6 (tests/go/etcd-*), whose snapshots the migration tests
#   restore (Debian gives etcd 3.4), named etcd-<version>;
# - object stores the backup tests write to, each a module with one `tool`
#   line, named after its directory: versitygw (an S3 gateway over a
#   directory) and fake-gcs-server (Google Cloud Storage's API).
# Binaries go to $RAFTKV_GO_BIN (default /var/tmp/raftkv-go/bin); one
# already there at the pinned version is kept, so only the first run builds
# (about a minute each on 2 cores, downloads included).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${RAFTKV_GO_BIN:-/var/tmp/raftkv-go/bin}

if ! command -v go >/dev/null; then
  echo "go-peers: Go is not installed: install Go >= 1.26 (https://go.dev/dl); the Go module proxy must be reachable" >&2
  exit 1
fi
mkdir -p "$bin"

for dir in "$root"/tests/go/etcd-*/; do
  version=$(sed -n 's#^require go.etcd.io/etcd/server/v3 v\(.*\)$#\1#p' "$dir/go.mod")
  if [ -z "$version" ]; then
    echo "go-peers: $dir/go.mod does not pin go.etcd.io/etcd/server/v3 on a 'require' line of its own" >&2
    exit 1
  fi
  out="$bin/etcd-$version"
  if [ -x "$out" ] && "$out" --version 2>/dev/null | grep -qx "etcd Version: $version"; then
    continue
  fi
  echo "go-peers: building etcd $version from the Go module proxy into $out" >&2
  (cd "$dir" && CGO_ENABLED=0 go build -trimpath -o "$out.partial" .)
  mv "$out.partial" "$out"
done

# Tools: the main module version `go version -m` reports must be the pinned one.
for dir in "$root"/tests/go/*/; do
  tool=$(sed -n 's#^tool \(.*\)$#\1#p' "$dir/go.mod")
  [ -n "$tool" ] || continue
  name=$(basename "$dir")
  module=$(cd "$dir" && go list -f '{{.Module.Path}}' "$tool")
  version=$(sed -n "s#^[[:space:]]*$module \(v[^ ]*\).*#\1#p" "$dir/go.mod" | head -1)
  out="$bin/$name"
  if [ -x "$out" ] && go version -m "$out" 2>/dev/null | grep -q "^[[:space:]]*mod[[:space:]]*$module[[:space:]]*$version[[:space:]]"; then
    continue
  fi
  echo "go-peers: building $tool $version from the Go module proxy into $out" >&2
  (cd "$dir" && CGO_ENABLED=0 go build -trimpath -o "$out.partial" "$tool")
  mv "$out.partial" "$out"
done
