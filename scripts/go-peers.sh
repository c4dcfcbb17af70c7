#!/usr/bin/env bash
# Builds the Go test peers from the Go module proxy, each from its module
# under tests/go (go.mod and go.sum pin every module):
# - etcd 3.5 and 3.6 (tests/go/etcd-*), whose snapshots the migration tests
#   restore (Debian gives etcd 3.4), named etcd-<version>;
# - object stores the backup tests write to, each a module with one `tool`
#   line, named after its directory: versitygw (an S3 gateway over a
#   directory) and fake-gcs-server (Google Cloud Storage's API).
# - lincheck (tests/go/lincheck): the linearizability checker of the fault
#   tests, porcupine (etcd's robustness suite's checker) behind a small main;
# - a Kubernetes control plane (tests/k8s): kube-apiserver,
#   kube-controller-manager and kubectl of the release tests/k8s/go.mod
#   pins, and its `pki` helper;
# - cert-manager's Certificate CRD, from its module (no build).
# From nothing (empty Go module and build caches) everything here takes
# about 10 minutes on 2 cores, downloads included (measured: 10 min 8 s).
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

# The linearizability checker: a main of our own over porcupine (seconds).
(cd "$root/tests/go/lincheck" && CGO_ENABLED=0 go build -trimpath -o "$bin/lincheck.partial" .)
mv "$bin/lincheck.partial" "$bin/lincheck"

# Kubernetes: upstream's own mains, stamped with the release they are built
# from (without -X they would say v0.0.0-master).
k8s="$root/tests/k8s"
version=$(sed -n 's#^[[:space:]]*k8s.io/kubernetes \(v[^ ]*\).*$#\1#p' "$k8s/go.mod" | head -1)
if [ -z "$version" ]; then
  echo "go-peers: $k8s/go.mod does not require k8s.io/kubernetes" >&2
  exit 1
fi
minor=$(echo "$version" | cut -d. -f2)
ldflags="-X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
for cmd in kube-apiserver kube-controller-manager kubectl; do
  out="$bin/$cmd"
  if [ -x "$out" ] && go version -m "$out" 2>/dev/null | grep -Eq "^[[:space:]]*(mod|dep)[[:space:]]*k8s.io/kubernetes[[:space:]]*$version[[:space:]]"; then
    continue
  fi
  echo "go-peers: building $cmd $version from the Go module proxy into $out (from nothing, kube-apiserver takes about 5 minutes and the others reuse most of it)" >&2
  (cd "$k8s" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out.partial" "k8s.io/kubernetes/cmd/$cmd")
  mv "$out.partial" "$out"
done
# The control plane's certificates and keys (pure standard library: seconds).
(cd "$k8s" && CGO_ENABLED=0 go build -trimpath -o "$bin/k8s-pki.partial" ./pki)
mv "$bin/k8s-pki.partial" "$bin/k8s-pki"
# The test node agent (tests/k8s/nodeagent): plays the kubelet for pods.
(cd "$k8s" && CGO_ENABLED=0 go build -trimpath -o "$bin/k8s-nodeagent.partial" ./nodeagent)
mv "$bin/k8s-nodeagent.partial" "$bin/k8s-nodeagent"
# cert-manager's Certificate CRD, as cert-manager publishes it in its Go
# module (deploy/crds): the operator's cert-manager tests install it and play
# the issuer themselves. Checked against the Go checksum database like any
# module; the version is pinned here.
cert_manager=v1.19.1
crd="$bin/cert-manager.io_certificates-$cert_manager.yaml"
if [ ! -s "$crd" ]; then
  echo "go-peers: fetching cert-manager $cert_manager's CRDs from the Go module proxy" >&2
  dir=$(cd "$k8s" && go mod download -json "github.com/cert-manager/cert-manager@$cert_manager" | sed -n 's#^[[:space:]]*"Dir": "\(.*\)",$#\1#p')
  if [ -z "$dir" ] || [ ! -s "$dir/deploy/crds/cert-manager.io_certificates.yaml" ]; then
    echo "go-peers: github.com/cert-manager/cert-manager@$cert_manager has no deploy/crds/cert-manager.io_certificates.yaml" >&2
    exit 1
  fi
  cp "$dir/deploy/crds/cert-manager.io_certificates.yaml" "$crd.partial"
  mv "$crd.partial" "$crd"
fi
