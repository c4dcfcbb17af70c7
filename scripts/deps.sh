#!/usr/bin/env bash
# What building and testing raftkv needs, checked by what the build really
# uses, and installed with apt-get when it can be; otherwise named.
#
#   scripts/deps.sh                  check; install what is missing; fail naming what is still missing
#   scripts/deps.sh --doctor         one line per prerequisite: found (version, path) or missing (package)
#   scripts/deps.sh --find-libclang [ROOT...]
#                                    print the libclang that bindgen would load from ROOTs (default: the
#                                    directories clang-sys searches); exit 1 when there is none
#
# Idempotent and quiet when everything is there.
set -euo pipefail

# The oldest etcd the compatibility tests and `make bench` run beside raftkv.
ETCD_MIN=3.4

# --- libclang, as clang-sys (bindgen's loader, used by librocksdb-sys) looks for it ---
# clang-sys loads libclang.so, libclang-N.so, libclang.so.N or libclang-N.so.N from
# LIBCLANG_PATH, `llvm-config --libdir` or the usual library directories. libclang-cpp.so.N
# (the C++ library, present on machines with only LLVM's runtime) is not it.
libclang_roots() {
  if [ -n "${LIBCLANG_PATH:-}" ]; then echo "$LIBCLANG_PATH"; return; fi
  if command -v llvm-config >/dev/null 2>&1; then llvm-config --libdir 2>/dev/null || true; fi
  local d
  for d in /usr/lib /usr/lib64 /usr/local/lib /usr/local/lib64 /usr/lib/*-linux-gnu /usr/lib/llvm-*/lib /usr/lib64/llvm; do
    [ -d "$d" ] && echo "$d"
  done
}

# Prints the first libclang found in the given roots (not recursive), or returns 1.
find_libclang() {
  local root f base
  for root in "$@"; do
    [ -d "$root" ] || continue
    for f in "$root"/libclang.so "$root"/libclang-*.so "$root"/libclang.so.* "$root"/libclang-*.so.*; do
      [ -e "$f" ] || continue
      base=${f##*/}
      # libclang-N... only with N a version number: excludes libclang-cpp.so.N.
      case "$base" in libclang-[0-9]*|libclang.so|libclang.so.*) ;; *) continue ;; esac
      echo "$f"
      return 0
    done
  done
  return 1
}

# --- versions ---
# "3.4.30" >= "3.4"?
version_at_least() {
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]
}
etcd_version()    { etcd --version 2>/dev/null | sed -n 's/^etcd Version: *//p' | head -n1; }
etcdctl_version() { etcdctl version 2>/dev/null | sed -n 's/^etcdctl version: *//p' | head -n1; }
protoc_version()  { protoc --version 2>/dev/null | sed -n 's/^libprotoc *//p' | head -n1; }
go_version()      { go version 2>/dev/null | sed -n 's/^go version go\([^ ]*\).*/\1/p'; }
python_version()  { python3 -c 'import sys, venv, ensurepip; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null; }

# One prerequisite per row: name, Debian package(s) that provide it, and a check that prints
# "version path" when found (and fits) and nothing otherwise.
check_cargo()   { command -v cargo >/dev/null && echo "$(cargo --version | awk '{print $2}') $(command -v cargo)"; }
check_libclang() {
  local lib
  # shellcheck disable=SC2046
  lib=$(find_libclang $(libclang_roots)) || return 0
  echo "${lib##*/} $lib"
}
# protoc, and the well-known types the etcd protos import (libprotobuf-dev: protoc alone
# cannot resolve google/protobuf/descriptor.proto).
check_protoc() {
  local v dir ok=0
  v=$(protoc_version) && [ -n "$v" ] || return 0
  dir=$(mktemp -d)
  printf 'syntax = "proto3";\nimport "google/protobuf/descriptor.proto";\nimport "google/protobuf/struct.proto";\n' > "$dir/wkt.proto"
  protoc -I "$dir" --descriptor_set_out=/dev/null "$dir/wkt.proto" 2>/dev/null && ok=1
  rm -rf "$dir"
  [ $ok = 1 ] && echo "$v $(command -v protoc)"
}
check_etcd()    { local v; v=$(etcd_version) && [ -n "$v" ] && version_at_least "$v" "$ETCD_MIN" && echo "$v $(command -v etcd)"; }
check_etcdctl() { local v; v=$(etcdctl_version) && [ -n "$v" ] && version_at_least "$v" "$ETCD_MIN" && echo "$v $(command -v etcdctl)"; }
check_python()  { local v; v=$(python_version) && [ -n "$v" ] && echo "$v $(command -v python3)"; }
check_iproute() { command -v ip >/dev/null && ip netns list >/dev/null 2>&1 && echo "$(ip -V 2>&1 | grep -o 'iproute2-[^ ,]*' | sed 's/iproute2-//') $(command -v ip)"; }
check_unshare() { command -v unshare >/dev/null && echo "$(unshare --version 2>&1 | awk '{print $NF}') $(command -v unshare)"; }
check_faketime() { local lib; lib=$(ls /usr/lib/*/faketime/libfaketime.so.1 2>/dev/null | head -1) && [ -n "$lib" ] && echo "$(dpkg-query -W -f='${Version}' libfaketime 2>/dev/null || echo unknown) $lib"; }
check_node()    { local v; v=$(node --version 2>/dev/null | sed 's/^v//') && [ -n "$v" ] && version_at_least "$v" 18 && command -v npm >/dev/null && echo "$v $(command -v node)"; }
check_curl()    { command -v curl >/dev/null && echo "$(curl --version | awk 'NR==1{print $2}') $(command -v curl)"; }
check_go()      { local v; v=$(go_version) && [ -n "$v" ] && version_at_least "$v" 1.26 && echo "$v $(command -v go)"; }

# name|packages|what needs it|how: apt (installed here), manual (named), optional (named, not required yet)
PREREQS=(
  "cargo|rustup (https://rustup.rs)|every build|manual"
  "libclang|libclang-dev|the RocksDB bindings (bindgen)|apt"
  "protoc|protobuf-compiler libprotobuf-dev|the gRPC code (tonic-build), with the well-known types|apt"
  "etcd|etcd-server (etcd >= $ETCD_MIN)|the tests and benchmarks that compare with etcd|apt"
  "etcdctl|etcd-client (etcdctl >= $ETCD_MIN)|the CLI compatibility tests|apt"
  "python|python3 python3-venv|the Helm chart tests (a virtualenv)|apt"
  "iproute|iproute2 (ip netns)|the test node agent's pod network (tests/k8s/nodeagent)|apt"
  "unshare|util-linux (unshare)|the test node agent's containers (tests/k8s/nodeagent)|apt"
  "faketime|libfaketime|the fault tests' wall-clock jumps on one member (tests/tests/chaos.rs)|apt"
  "node|nodejs npm (Node.js >= 18)|Azurite, the Azure Storage emulator the backup tests write to (tests/node)|apt"
  "curl|curl|the JSON gateway tests (tests/scripts/gateway_session.sh, as etcd's guide)|apt"
  "go|Go >= 1.26 (https://go.dev/dl; Debian's golang-go is too old)|the test peers built from Go modules (tests/go: etcd 3.5 and 3.6, versitygw, fake-gcs-server)|manual"
)

field() { echo "$1" | cut -d'|' -f"$2"; }

doctor() {
  local row name found status=0
  for row in "${PREREQS[@]}"; do
    name=$(field "$row" 1)
    found=$("check_$name" || true)
    if [ -n "$found" ]; then
      printf '%-9s found    %s (%s)\n' "$name" "${found%% *}" "${found#* }"
    else
      printf '%-9s MISSING  install: %s; needed by %s\n' "$name" "$(field "$row" 2)" "$(field "$row" 3)"
      [ "$(field "$row" 4)" = optional ] || status=1
    fi
  done
  return $status
}

# Names of the missing prerequisites, one per line.
missing_prereqs() {
  local row name
  for row in "${PREREQS[@]}"; do
    name=$(field "$row" 1)
    [ "$(field "$row" 4)" = optional ] && continue
    [ -n "$("check_$name" || true)" ] || echo "$row"
  done
}

install_missing() {
  local rows=() row pkgs=() manual=()
  mapfile -t rows < <(missing_prereqs)
  [ ${#rows[@]} -eq 0 ] && return 0
  for row in "${rows[@]}"; do
    if [ "$(field "$row" 4)" = apt ]; then
      case "$(field "$row" 1)" in
        libclang) pkgs+=(libclang-dev) ;;
        protoc)   pkgs+=(protobuf-compiler libprotobuf-dev) ;;
        etcd)     pkgs+=(etcd-server) ;;
        etcdctl)  pkgs+=(etcd-client) ;;
        python)   pkgs+=(python3 python3-venv) ;;
        node)     pkgs+=(nodejs npm) ;;
        iproute)  pkgs+=(iproute2) ;;
        unshare)  pkgs+=(util-linux) ;;
        faketime) pkgs+=(libfaketime) ;;
      esac
    else
      manual+=("$(field "$row" 1): $(field "$row" 2)")
    fi
  done
  if [ ${#manual[@]} -gt 0 ]; then
    printf 'deps: missing, and not installable here: %s\n' "${manual[@]}" >&2
    exit 1
  fi
  echo "deps: installing ${pkgs[*]}" >&2
  local sudo=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; fi
  if command -v apt-get >/dev/null && { [ "$(id -u)" = 0 ] || [ -n "$sudo" ]; }; then
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  else
    echo "deps: cannot install packages here (no apt-get, or not root and no sudo). Install: ${pkgs[*]}" >&2
    exit 1
  fi
  # What the packages gave must pass the same checks (an etcd older than $ETCD_MIN, say).
  if [ -n "$(missing_prereqs)" ]; then
    echo "deps: still missing after installing:" >&2
    doctor >&2 || true
    exit 1
  fi
}

case "${1:-}" in
  --doctor) doctor ;;
  --find-libclang) shift; if [ $# -eq 0 ]; then mapfile -t roots < <(libclang_roots); set -- "${roots[@]}"; fi; find_libclang "$@" ;;
  "") install_missing ;;
  *) echo "usage: $0 [--doctor | --find-libclang [ROOT...]]" >&2; exit 2 ;;
esac
