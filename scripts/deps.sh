#!/usr/bin/env bash
# Installs what building and testing raftkv needs, with apt-get when it can;
# otherwise says exactly what to install. Idempotent and quiet when all is there.
set -euo pipefail

missing=()
command -v cargo >/dev/null || { echo "deps: cargo is missing: install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
command -v protoc >/dev/null || missing+=(protobuf-compiler)
if ! ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 && [ -z "${LIBCLANG_PATH:-}" ]; then
  missing+=(libclang-dev clang)
fi
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)

[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps: installing ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; fi
fi
if command -v apt-get >/dev/null && { [ "$(id -u)" = 0 ] || [ -n "$sudo" ]; }; then
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  exit 0
fi
cat >&2 <<MSG
deps: cannot install packages here (no apt-get, or not root and no sudo).
Install these yourself, then run make again:
  ${missing[*]}
  (Debian/Ubuntu package names: protobuf-compiler gives protoc; libclang-dev and clang
   let the RocksDB bindings build; etcd-server and etcd-client give the real etcd 3.4
   and etcdctl that the compatibility tests and 'make bench' run beside raftkv.)
MSG
exit 1
