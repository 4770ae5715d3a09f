#!/usr/bin/env bash
# Build kube-apiserver from source for the sandbox and cache the binary
# (sandbox/cluster looks it up). See lib/build-cached.sh for the cache.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib/build-cached.sh
source "${repo_root}/scripts/lib/build-cached.sh"
build_cached kube-apiserver "${repo_root}/sandbox/apiserver" k8s.io/kubernetes k8s.io/kubernetes/cmd/kube-apiserver
