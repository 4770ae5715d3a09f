# build_cached NAME MOD_DIR MODULE PACKAGE: build PACKAGE (a main package of
# MODULE) from the nested module in MOD_DIR and cache the binary; print its
# path on stdout, progress on stderr. Sourced by build-kube-apiserver.sh and
# build-istiod.sh.
#
# Idempotent: the binary is named NAME-<MODULE's version>-<hash of
# MOD_DIR/go.mod>, so a version bump rebuilds and anything else is a no-op.
#
# Cache dir: $MTLS_MIGRATE_CACHE, else $XDG_CACHE_HOME/mtls-migrate, else
# ~/.cache/mtls-migrate. The sandbox looks the binaries up in the same place.
build_cached() {
  local name="$1" mod_dir="$2" module="$3" pkg="$4"
  local cache="${MTLS_MIGRATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mtls-migrate}"
  local version hash out tmp start
  version="$(cd "${mod_dir}" && go list -m -f '{{.Version}}' "${module}")"
  if [[ -z "${version}" ]]; then
    echo "build ${name}: cannot tell the ${module} version from ${mod_dir}/go.mod" >&2
    return 1
  fi
  hash="$(sha256sum "${mod_dir}/go.mod" | cut -c1-12)"
  out="${cache}/${name}-${version}-${hash}"
  if [[ -x "${out}" ]]; then
    echo "${out}"
    return 0
  fi
  mkdir -p "${cache}"
  tmp="$(mktemp "${cache}/.${name}-build.XXXXXX")"
  # shellcheck disable=SC2064 # expand now: tmp is local
  trap "rm -f '${tmp}'" EXIT
  echo "build ${name}: building ${pkg} ${version} (takes several minutes on a cold cache)..." >&2
  start=$(date +%s)
  (
    cd "${mod_dir}"
    CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "${tmp}" "${pkg}"
  )
  chmod 0755 "${tmp}"
  # rename(2) is atomic: concurrent builders and readers never see a partial file.
  mv -f "${tmp}" "${out}"
  trap - EXIT
  echo "build ${name}: built in $(( $(date +%s) - start ))s" >&2
  echo "${out}"
}
