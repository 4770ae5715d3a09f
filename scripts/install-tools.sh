#!/usr/bin/env bash
# Installs the pinned developer tools (golangci-lint) into the project cache,
# once: a second run finds the binary and returns at once. Prints the path.
set -euo pipefail

GOLANGCI_LINT_VERSION=v2.15.0
CACHE="${MTLS_MIGRATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mtls-migrate}"
BIN="$CACHE/bin/golangci-lint-$GOLANGCI_LINT_VERSION"

if [[ ! -x "$BIN" ]]; then
	echo "installing golangci-lint $GOLANGCI_LINT_VERSION (first run only, a few minutes)..." >&2
	tmp="$(mktemp -d)"
	trap 'rm -rf "$tmp"' EXIT
	GOBIN="$tmp" go install "github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$GOLANGCI_LINT_VERSION"
	mkdir -p "$CACHE/bin"
	mv "$tmp/golangci-lint" "$BIN"
fi
echo "$BIN"
