#!/usr/bin/env bash
# The fresh-machine check (`make test-cold`): a fresh clone of HEAD runs `make test` with every
# cache empty, then `make test` again on the caches the first run filled, which must pass
# without rebuilding anything. Prints both wall times.
# Empty means new folders for RADPS_CACHE (cluster binaries, images, wheels, Docker's data),
# RADPS_HOME, GOCACHE, GOMODCACHE, and pip's and uv's download caches, all under one folder in
# ${RADPS_COLD_DIR:-/tmp}, deleted at the end (RADPS_COLD_KEEP=1 keeps it). Debian packages
# (hack/host-deps.sh) are the machine's, not a cache: they stay installed.
# It tests what is committed: uncommitted changes are not in the clone.
# The local cluster uses fixed ports and a bridge: a running one must be stopped first.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

main() {
  # (A full-mode API server listens on the bridge: its existence is the sign. A connection to
  # the bridge address without the bridge can reach whatever routes it elsewhere.)
  if port_open 127.0.0.1 "${API_PORT}" || ip link show "${BRIDGE_NAME}" >/dev/null 2>&1; then
    die "a local cluster is running (port ${API_PORT} or bridge ${BRIDGE_NAME}): \`make cluster-down\` first"
  fi
  local shared="${RADPS_SHARED_DIR:-$(cd "${REPO_ROOT}/.." && pwd)/shared}"
  [[ -d "${shared}" ]] || die "no shared data folder at ${shared} (set RADPS_SHARED_DIR)"
  local dir
  mkdir -p "${RADPS_COLD_DIR:-/tmp}"
  dir="$(mktemp -d "${RADPS_COLD_DIR:-/tmp}/radps-cold.XXXXXX")"
  # shellcheck disable=SC2064
  trap "cleanup '${dir}'" EXIT

  git -C "${REPO_ROOT}" diff --quiet HEAD -- ||
    log "test-cold: uncommitted changes are not tested, only HEAD"
  git clone --quiet --no-hardlinks "${REPO_ROOT}" "${dir}/radps"
  log "test-cold: $(git -C "${dir}/radps" log -1 --format='%h %s' | cut -c1-80) in ${dir}"

  export RADPS_CACHE="${dir}/cache" RADPS_HOME="${dir}/home" GOCACHE="${dir}/go-build" \
    GOMODCACHE="${dir}/go-mod" GOFLAGS=-modcacherw PIP_CACHE_DIR="${dir}/pip" \
    UV_CACHE_DIR="${dir}/uv" RADPS_SHARED_DIR="${shared}" \
    DOCKER_HOST="unix://${dir}/cache/docker/docker.sock"
  unset RADPS_CLUSTER_DIR

  local run start times=()
  for run in cold warm; do
    log "test-cold: ${run} make test (log: ${dir}/${run}.log)"
    start=${SECONDS}
    if ! (cd "${dir}/radps" && make test) >"${dir}/${run}.log" 2>&1; then
      tail -n 60 "${dir}/${run}.log" >&2
      RADPS_COLD_KEEP=1
      die "test-cold: the ${run} make test failed after $(minutes $((SECONDS - start))) (log: ${dir}/${run}.log)"
    fi
    times+=("$((SECONDS - start))")
    log "test-cold: ${run} make test passed in $(minutes "${times[-1]}"): $(summary "${dir}/${run}.log")"
  done
  if grep -E 'first run only|docker build radps|starting a private dockerd' "${dir}/warm.log" >&2; then
    RADPS_COLD_KEEP=1
    die "test-cold: the warm make test rebuilt something (above; log: ${dir}/warm.log)"
  fi
  echo "cold make test: $(minutes "${times[0]}")  warm make test: $(minutes "${times[1]}")"
  echo "cold: $(summary "${dir}/cold.log")"
  echo "warm: $(summary "${dir}/warm.log")"
}

minutes() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# pytest's last line: "N passed, M skipped in T s (...)".
summary() { grep -E '^=+ .*(passed|failed).* in ' "$1" | tail -n 1 | tr -d '='; }

cleanup() {
  local dir="$1"
  # A run that failed may have left its cluster up: stop it (its mounts live under dir).
  if [[ -d "${dir}/radps" ]]; then
    (cd "${dir}/radps" && RADPS_CACHE="${dir}/cache" hack/cluster-down.sh >/dev/null 2>&1) || true
    (cd "${dir}/radps" && RADPS_CACHE="${dir}/cache" hack/image.sh docker-stop >/dev/null 2>&1) || true
  fi
  if [[ "${RADPS_COLD_KEEP:-0}" == 1 ]]; then
    log "test-cold: kept ${dir}"
  else
    chmod -R u+w "${dir}" 2>/dev/null || true
    rm -rf "${dir}"
  fi
}

main "$@"
