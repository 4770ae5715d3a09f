#!/usr/bin/env bash
# Build istiod (pilot-discovery) from source for the sandbox and cache the
# binary (sandbox/istio looks it up). See lib/build-cached.sh for the cache.
# About 190 MB; 12-15 minutes on a cold Go build cache with 2 cores.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib/build-cached.sh
source "${repo_root}/scripts/lib/build-cached.sh"
build_cached pilot-discovery "${repo_root}/sandbox/istiod" istio.io/istio istio.io/istio/pilot/cmd/pilot-discovery
