#!/usr/bin/env bash
# Build kube-apiserver from source for the sandbox and cache the binary.
#
# Idempotent: the binary is named after the Kubernetes version and a hash of
# sandbox/apiserver/go.mod, so a version bump rebuilds and anything else is a
# no-op. Prints the binary's path on stdout; progress goes to stderr.
#
# Cache dir: $MTLS_MIGRATE_CACHE, else $XDG_CACHE_HOME/mtls-migrate, else
# ~/.cache/mtls-migrate. sandbox/cluster looks the binary up in the same place.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mod_dir="${repo_root}/sandbox/apiserver"
cache="${MTLS_MIGRATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mtls-migrate}"

version="$(cd "${mod_dir}" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
if [[ -z "${version}" ]]; then
  echo "build-kube-apiserver: cannot tell the k8s.io/kubernetes version from ${mod_dir}/go.mod" >&2
  exit 1
fi
hash="$(sha256sum "${mod_dir}/go.mod" | cut -c1-12)"
out="${cache}/kube-apiserver-${version}-${hash}"

if [[ -x "${out}" ]]; then
  echo "${out}"
  exit 0
fi

mkdir -p "${cache}"
tmp="$(mktemp "${cache}/.kube-apiserver-build.XXXXXX")"
trap 'rm -f "${tmp}"' EXIT

echo "build-kube-apiserver: building kube-apiserver ${version} (takes several minutes on a cold cache)..." >&2
start=$(date +%s)
(
  cd "${mod_dir}"
  CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "${tmp}" k8s.io/kubernetes/cmd/kube-apiserver
)
chmod 0755 "${tmp}"
# rename(2) is atomic: concurrent builders and readers never see a partial file.
mv -f "${tmp}" "${out}"
trap - EXIT
echo "build-kube-apiserver: built in $(( $(date +%s) - start ))s" >&2
echo "${out}"
