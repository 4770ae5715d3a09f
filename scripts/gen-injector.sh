#!/usr/bin/env bash
# Regenerate sandbox/controlplane/injector.gen.yaml: istiod's sidecar
# injector objects (the istio-sidecar-injector ConfigMap and
# MutatingWebhookConfiguration) rendered from the charts of the istio.io/istio
# version sandbox/istiod pins, by istioctl's renderer
# (sandbox/istiod/geninjector). The output is committed: tests and CI never
# run this. Run it after bumping istio.io/istio in sandbox/istiod/go.mod (and
# in sandbox/istiod/geninjector/go.mod, which must pin the same version) or
# dataplane.ProxyVersion. A few minutes on a cold Go build cache.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
gen_dir="${repo_root}/sandbox/istiod/geninjector"
want="$(cd "${repo_root}/sandbox/istiod" && go list -m -f '{{.Version}}' istio.io/istio)"
got="$(cd "${gen_dir}" && go list -m -f '{{.Version}}' istio.io/istio)"
if [[ "${want}" != "${got}" ]]; then
  echo "gen-injector: sandbox/istiod pins istio.io/istio ${want} but sandbox/istiod/geninjector pins ${got}; align them (go get istio.io/istio@${want} in ${gen_dir})" >&2
  exit 1
fi
# The proxy image tag the simulated sidecars claim (their istio_build metric).
tag="$(sed -n 's/^const ProxyVersion = "\(.*\)"$/\1/p' "${repo_root}/sandbox/dataplane/topology.go")"
if [[ -z "${tag}" ]]; then
  echo "gen-injector: cannot read ProxyVersion from sandbox/dataplane/topology.go" >&2
  exit 1
fi
out="${repo_root}/sandbox/controlplane/injector.gen.yaml"
(cd "${gen_dir}" && go run . -tag "${tag}" -out "${out}.tmp")
mv -f "${out}.tmp" "${out}"
echo "gen-injector: wrote ${out} (istio.io/istio ${want}, tag ${tag})" >&2
