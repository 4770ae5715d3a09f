#!/usr/bin/env bash
# Install the Prometheus server the sandbox runs (sandbox/prometheus), unless
# one is already on PATH. Uses Debian's package, which does not start a
# service by itself where there is no systemd; the sandbox starts its own.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1; then
  command -v prometheus
  exit 0
fi

sudo=""
if [[ "$(id -u)" != "0" ]]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "install-prometheus: prometheus is not on PATH and this is not root and there is no sudo; install the 'prometheus' package or put a prometheus binary on PATH" >&2
    exit 1
  fi
  sudo="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
${sudo} apt-get update >&2
${sudo} apt-get install -y --no-install-recommends prometheus >&2
command -v prometheus
