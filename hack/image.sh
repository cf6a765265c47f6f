#!/usr/bin/env bash
# Build the radps image without any image registry, and load it into the local cluster.
#   hack/image.sh build   base (debootstrap + docker import) -> wheels (pip wheel on the host)
#                         -> docker build --network none -> radps:<version>
#   hack/image.sh load    docker save | ctr import into the cluster's containerd (full mode)
#   hack/image.sh all     build, then load when the cluster's containerd runs (default)
#   hack/image.sh docker-stop   stop the Docker daemon this script started, if any
# Docker: an already running daemon (DOCKER_HOST or the default socket) is used as is;
# otherwise a private dockerd is started (own socket, data and PID file under the cache, no
# bridge, no iptables changes) and left running for the next build (`docker-stop` ends it).
# Why wheels on the host: inside a build container the package index's TLS chain is not
# trusted here (the machine's CA bundle is not in the image), and a CA is never baked in.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DEBIAN_RELEASE="${RADPS_DEBIAN_RELEASE:-bookworm}"       # its python3 is 3.11
BASE_TAG="radps.local/debian-python:${DEBIAN_RELEASE}"
# Wheels are resolved by the same Python version as the image's: environment markers such as
# `python_full_version < "3.11.3"` must come out the same. Debian's own python3 matches the
# debootstrapped base; set WHEEL_PYTHON for another base.
WHEEL_PYTHON="${WHEEL_PYTHON:-/usr/bin/python3}"
IMAGE="${RADPS_IMAGE:-radps:$(sed -nE 's/^version = "([^"]+)"/\1/p' "${REPO_ROOT}/pyproject.toml" | head -1)}"
DOCKER_DIR="${RADPS_CACHE}/docker"

# Use a reachable daemon, or start a private one.
ensure_docker() {
  if docker info >/dev/null 2>&1; then return 0; fi
  export DOCKER_HOST="unix://${DOCKER_DIR}/docker.sock"
  if docker info >/dev/null 2>&1; then return 0; fi
  command -v dockerd >/dev/null || die "no Docker daemon reachable and no dockerd (Debian: docker.io)"
  [[ "$(id -u)" == 0 ]] || die "starting a private dockerd needs root"
  mkdir -p "${DOCKER_DIR}"
  log "starting a private dockerd (socket ${DOCKER_DIR}/docker.sock)"
  # Builds run with --network none, so the daemon needs neither a bridge nor NAT rules.
  setsid dockerd --host "${DOCKER_HOST}" --data-root "${DOCKER_DIR}/data" \
    --exec-root "${DOCKER_DIR}/exec" --pidfile "${DOCKER_DIR}/dockerd.pid" \
    --bridge none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
    >>"${DOCKER_DIR}/dockerd.log" 2>&1 </dev/null 9>&- &
  wait_for "dockerd" 60 docker info
}

docker_stop() {
  local pf="${DOCKER_DIR}/dockerd.pid" pid i
  [[ -s "${pf}" ]] || return 0
  pid="$(cat "${pf}")"
  if pid_alive "${pid}"; then
    log "stopping the private dockerd (pid ${pid})"
    kill -TERM "${pid}"
    for ((i = 0; i < 300; i++)); do pid_alive "${pid}" || break; sleep 0.1; done
  fi
  rm -f "${pf}"
}

# A Debian base with python3, made by debootstrap (~45 s, once) and imported into Docker.
ensure_base() {
  if docker image inspect "${BASE_TAG}" >/dev/null 2>&1; then return 0; fi
  local tarball="${RADPS_CACHE}/base/base-${DEBIAN_RELEASE}.tar"
  if [[ ! -s "${tarball}" ]]; then
    command -v debootstrap >/dev/null || die "debootstrap is needed (Debian: apt-get install debootstrap)"
    local root="${RADPS_CACHE}/base/rootfs-${DEBIAN_RELEASE}"
    log "debootstrap ${DEBIAN_RELEASE} with python3 into ${root}"
    rm -rf "${root}"
    mkdir -p "$(dirname "${root}")"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      "${DEBIAN_RELEASE}" "${root}" >"${LOG_DIR}/debootstrap.log" 2>&1 ||
      die "debootstrap failed (see ${LOG_DIR}/debootstrap.log)"
    # Package caches and lists are dead weight in an image.
    rm -rf "${root}"/var/cache/apt/archives/*.deb "${root}"/var/lib/apt/lists/*
    tar -C "${root}" -cf "${tarball}.tmp" . && mv "${tarball}.tmp" "${tarball}"
    rm -rf "${root}"
  fi
  log "importing ${BASE_TAG}"
  docker import "${tarball}" "${BASE_TAG}" >/dev/null
}

# Wheels of radps and all its dependencies, built on the host in a venv of WHEEL_PYTHON,
# cached per (pyproject.toml, Python version).
build_wheels() {
  local base_py host_py key dir venv
  base_py="$(docker run --rm --network none "${BASE_TAG}" python3 -c \
    'import platform; print(platform.python_version())')"
  host_py="$("${WHEEL_PYTHON}" -c 'import platform; print(platform.python_version())')"
  [[ "${base_py}" == "${host_py}" ]] ||
    die "the base has Python ${base_py}, ${WHEEL_PYTHON} is ${host_py}: set WHEEL_PYTHON to a ${base_py}"
  venv="${RADPS_CACHE}/wheel-builder-${host_py}"
  [[ -x "${venv}/bin/pip" ]] || "${WHEEL_PYTHON}" -m venv "${venv}" >&2
  key="$(sha256sum <"${REPO_ROOT}/pyproject.toml" | cut -c1-16)"
  dir="${RADPS_CACHE}/wheels/${key}-py${host_py}"
  if [[ ! -f "${dir}/.complete" ]]; then
    log "building wheels into ${dir}"
    mkdir -p "${dir}"
    "${venv}/bin/pip" wheel -q --wheel-dir "${dir}" "${REPO_ROOT}" >&2
    touch "${dir}/.complete"
  else
    # The dependencies are cached; the project itself changes with every commit.
    rm -f "${dir}"/radps-*.whl
    "${venv}/bin/pip" wheel -q --no-deps --wheel-dir "${dir}" "${REPO_ROOT}" >&2
  fi
  echo "${dir}"
}

build() {
  mkdir -p "${LOG_DIR}" "${IMAGES_DIR}"
  ensure_docker
  ensure_base
  local wheels context
  wheels="$(build_wheels)"
  # The build context: the tracked (and untracked, not ignored) files of the repo + wheels.
  context="$(mktemp -d "${RADPS_CACHE}/image-context.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '${context}'" EXIT
  (cd "${REPO_ROOT}" && git ls-files -z --cached --others --exclude-standard |
    tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -C "${context}" -xf -
  cp -a "${wheels}" "${context}/.wheels"
  log "docker build ${IMAGE} (base ${BASE_TAG})"
  local start=${SECONDS}
  DOCKER_BUILDKIT=0 docker build --network none --build-arg "BASE_IMAGE=${BASE_TAG}" \
    -t "${IMAGE}" "${context}" >"${LOG_DIR}/image-build.log" 2>&1 ||
    die "docker build failed (see ${LOG_DIR}/image-build.log)"
  log "built ${IMAGE} in $((SECONDS - start)) s"
  # Intermediate images of earlier builds of this tag.
  docker image prune -f >/dev/null 2>&1 || true
}

load() {
  [[ -S "${CONTAINERD_SOCK}" ]] || die "the cluster's containerd is not running (make cluster-up MODE=full)"
  ensure_docker
  log "loading ${IMAGE} into the cluster's containerd"
  docker save "${IMAGE}" | ctr --address "${CONTAINERD_SOCK}" -n k8s.io images import - >/dev/null
}

main() {
  case "${1:-all}" in
    build) build ;;
    load) load ;;
    all)
      build
      if [[ -S "${CONTAINERD_SOCK}" ]] && is_running containerd; then load; fi
      ;;
    docker-stop) docker_stop ;;
    *) die "usage: $0 [build|load|all|docker-stop]" ;;
  esac
}

main "$@"
