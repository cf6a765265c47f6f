#!/usr/bin/env bash
# Build the radps image without any image registry, and load it into the local cluster.
#   hack/image.sh build    base (debootstrap + docker import) -> the dependencies' wheels (pip wheel
#                          in a container of the base) -> docker build --network none -> a
#                          `docker save` tarball in the cache
#   hack/image.sh load     import that tarball into the cluster's containerd (full mode)
#   hack/image.sh all      build, then load when the cluster's containerd runs (default)
#   hack/image.sh current  exit 0 when the cached tarball was built from this tree, else say why
#   hack/image.sh docker-stop   stop a private dockerd left by an older version of this script
# Every step is cached by its inputs: the base by Debian release, the wheels by pyproject.toml and
# Python version, the image by the files it is built from. Building an unchanged tree is a no-op
# that starts nothing, and loading needs no Docker at all.
# Docker: an already running daemon (DOCKER_HOST or the default socket) is used as is; otherwise a
# private dockerd is started for the build (own socket, data and PID file under the cache, no
# bridge, no iptables changes) and stopped when the build ends. Its data (layers) stays cached.
# Why the wheels are built outside the image build: the build runs with --network none, and a
# CA is never baked into the image. The wheel container gets the host's CA bundle as a read-only
# mount, for that one run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Debian 13's python3 is 3.13.5. Bookworm's 3.11.2 has CPython's concurrent ast.parse bug
# (python/cpython#106905), which failed xradio imports in Dask worker threads.
DEBIAN_RELEASE="${RADPS_DEBIAN_RELEASE:-trixie}"
BASE_TAG="radps.local/debian-python:${DEBIAN_RELEASE}"
BUILD_STAGE_TAG="radps.local/radps-build:cache"
VERSION="$(sed -nE 's/^version = "([^"]+)"/\1/p' "${REPO_ROOT}/pyproject.toml" | head -1)"
IMAGE="${RADPS_IMAGE:-radps:${VERSION}}"
IMAGE_TAR="${IMAGES_DIR}/${IMAGE//[:\/]/-}.tar"
IMAGE_KEY_FILE="${IMAGE_TAR%.tar}.key"
# What the image is built from (the Dockerfile copies exactly these).
IMAGE_SOURCES=(Dockerfile pyproject.toml README.md operator flows)
DOCKER_DIR="${RADPS_CACHE}/docker"
STARTED_DOCKER=0

# The image's identity: its base and the content of every file it is built from (tracked, or
# untracked and not ignored, as a build would see them). README.md only fills the package's
# description: an edit to it, even during a test run, does not make the image stale.
image_key() {
  {
    echo "${DEBIAN_RELEASE} ${IMAGE}"
    cd "${REPO_ROOT}" &&
      git ls-files -z --cached --others --exclude-standard -- "${IMAGE_SOURCES[@]}" \
        ':!README.md' |
      sort -zu | while IFS= read -r -d '' file; do
        [[ -f "${file}" ]] && printf '%s %s\n' "$(sha256sum <"${file}" | cut -c1-64)" "${file}"
      done
  } | sha256sum | cut -c1-16
}

# current [quiet]: the cached tarball is this tree's image.
current() {
  local want
  want="$(image_key)"
  if [[ -s "${IMAGE_TAR}" && "$(cat "${IMAGE_KEY_FILE}" 2>/dev/null)" == "${want}" ]]; then
    return 0
  fi
  [[ "${1:-}" == quiet ]] ||
    log "the cached ${IMAGE} is not built from this tree (${IMAGE_TAR}): run \`make image\`"
  return 1
}

# Use a reachable daemon, or start a private one (stopped again when this script exits).
ensure_docker() {
  if docker info >/dev/null 2>&1; then return 0; fi
  export DOCKER_HOST="unix://${DOCKER_DIR}/docker.sock"
  if docker info >/dev/null 2>&1; then return 0; fi
  command -v dockerd >/dev/null || die "no Docker daemon reachable and no dockerd (Debian: docker.io)"
  [[ "$(id -u)" == 0 ]] || die "starting a private dockerd needs root"
  mkdir -p "${DOCKER_DIR}"
  log "starting a private dockerd for the build (socket ${DOCKER_DIR}/docker.sock)"
  # Builds run with --network none (the wheels container with the host's network), so the
  # daemon needs neither a bridge nor NAT rules.
  setsid dockerd --host "${DOCKER_HOST}" --data-root "${DOCKER_DIR}/data" \
    --exec-root "${DOCKER_DIR}/exec" --pidfile "${DOCKER_DIR}/dockerd.pid" \
    --bridge none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
    >>"${DOCKER_DIR}/dockerd.log" 2>&1 </dev/null 9>&- &
  STARTED_DOCKER=1
  trap docker_stop EXIT
  wait_for "dockerd" 60 docker info
}

docker_stop() {
  local pf="${DOCKER_DIR}/dockerd.pid" pid i
  [[ -s "${pf}" ]] || return 0
  pid="$(cat "${pf}")"
  if pid_alive "${pid}" && [[ "$(readlink "/proc/${pid}/exe")" == */dockerd ]]; then
    log "stopping the private dockerd (pid ${pid})"
    kill -TERM "${pid}"
    for ((i = 0; i < 300; i++)); do pid_alive "${pid}" || break; sleep 0.1; done
    pid_alive "${pid}" && die "the private dockerd (pid ${pid}) did not stop in 30 s"
  fi
  rm -f "${pf}"
  # dockerd leaves the host's network namespace bind-mounted under its exec root.
  unmount_below "${DOCKER_DIR}"
}

# A Debian base with python3, made by debootstrap (once) and imported into Docker.
ensure_base() {
  if docker image inspect "${BASE_TAG}" >/dev/null 2>&1; then return 0; fi
  local tarball="${RADPS_CACHE}/base/base-${DEBIAN_RELEASE}.tar"
  if [[ ! -s "${tarball}" ]]; then
    command -v debootstrap >/dev/null || die "debootstrap is needed (Debian: apt-get install debootstrap)"
    local root="${RADPS_CACHE}/base/rootfs-${DEBIAN_RELEASE}" start=${SECONDS}
    first_use "a Debian ${DEBIAN_RELEASE} base with python3 (debootstrap)" "~1 min"
    rm -rf "${root}"
    mkdir -p "$(dirname "${root}")" "${BUILD_LOG_DIR}"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      "${DEBIAN_RELEASE}" "${root}" >"${BUILD_LOG_DIR}/debootstrap.log" 2>&1 ||
      die "debootstrap failed (see ${BUILD_LOG_DIR}/debootstrap.log)"
    # Package caches and lists are dead weight in an image.
    rm -rf "${root}"/var/cache/apt/archives/*.deb "${root}"/var/lib/apt/lists/*
    tar -C "${root}" -cf "${tarball}.tmp" . && mv "${tarball}.tmp" "${tarball}"
    rm -rf "${root}"
    log "made the ${DEBIAN_RELEASE} base in $((SECONDS - start)) s"
  fi
  log "importing ${BASE_TAG}"
  docker import "${tarball}" "${BASE_TAG}" >/dev/null
}

# The wheels of radps's dependencies (and of its build backend), resolved by the base's own Python
# in a container with the host's network, cached per (pyproject.toml, Python version). Published
# wheels only: the base has no compiler, and letting pip consider sdists made its resolver
# backtrack into an old matplotlib that needs one. Beside them, requirements.txt pins exactly
# those wheels for the Dockerfile's dependency layer.
build_wheels() {
  local context="$1" py key dir ca start=${SECONDS}
  py="$(docker run --rm --network none "${BASE_TAG}" python3 -c \
    'import platform; print(platform.python_version())')"
  key="$(sha256sum <"${REPO_ROOT}/pyproject.toml" | cut -c1-16)"
  dir="${RADPS_CACHE}/wheels/${key}-py${py}"
  if [[ ! -f "${dir}/.complete" ]]; then
    first_use "the wheels of every dependency for Python ${py}" "~30 s"
    rm -rf "${dir}"
    mkdir -p "${dir}" "${BUILD_LOG_DIR}"
    ca="${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"
    [[ -s "${ca}" ]] || die "no CA bundle at ${ca} (set PIP_CERT)"
    docker run --rm --network host --user "$(id -u):$(id -g)" -e HOME=/tmp \
      -e PIP_CERT=/run/host-ca.crt -e PIP_DISABLE_PIP_VERSION_CHECK=1 \
      -e PIP_INDEX_URL -e PIP_EXTRA_INDEX_URL -e PIP_TRUSTED_HOST \
      -e HTTPS_PROXY -e HTTP_PROXY -e NO_PROXY -e https_proxy -e http_proxy -e no_proxy \
      -v "${ca}:/run/host-ca.crt:ro" -v "${context}:/src:ro" -v "${dir}:/wheels" \
      "${BASE_TAG}" sh -ec 'python3 -m venv /tmp/venv && cp -r /src /tmp/src
        /tmp/venv/bin/pip wheel -q --only-binary=:all: --no-binary=radps --wheel-dir /wheels \
          /tmp/src "setuptools>=68" wheel' \
      >"${BUILD_LOG_DIR}/wheels.log" 2>&1 ||
      { tail -n 30 "${BUILD_LOG_DIR}/wheels.log" >&2; die "building wheels failed (log: ${BUILD_LOG_DIR}/wheels.log)"; }
    # radps itself is built from source in the image: its code changes, its dependencies don't.
    rm -f "${dir}"/radps-*.whl
    (cd "${dir}" && ls -- *.whl | sed -E 's/^([^-]+)-([^-]+)-.*/\1==\2/') >"${dir}/requirements.txt"
    touch "${dir}/.complete"
    log "built $(wc -l <"${dir}/requirements.txt") wheels in $((SECONDS - start)) s"
  fi
  echo "${dir}"
}

build() {
  if current quiet; then
    log "${IMAGE} is up to date (${IMAGE_TAR})"
    return 0
  fi
  require_build "the ${IMAGE} image of this tree"
  mkdir -p "${BUILD_LOG_DIR}" "${IMAGES_DIR}"
  local key context wheels start=${SECONDS}
  key="$(image_key)"
  ensure_docker
  ensure_base
  # The build context: the image's sources as they are in the tree (untracked files included,
  # ignored ones not), plus the wheels.
  context="$(mktemp -d "${RADPS_CACHE}/image-context.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '${context}'; [[ ${STARTED_DOCKER} == 1 ]] && docker_stop" EXIT
  (cd "${REPO_ROOT}" && git ls-files -z --cached --others --exclude-standard -- "${IMAGE_SOURCES[@]}" |
    tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -C "${context}" -xf -
  wheels="$(build_wheels "${context}")"
  cp -a "${wheels}" "${context}/.wheels"
  [[ -s "${IMAGE_TAR}" ]] && log "rebuilding ${IMAGE}: the tree changed since the cached one"
  log "docker build ${IMAGE} (base ${BASE_TAG}; first run ~3 min, then ~1 min)"
  : >"${BUILD_LOG_DIR}/image-build.log"
  # The build stage is tagged too: untagged, the prune below would take its dependency layer,
  # the one a rebuild after a code change reuses.
  local target
  for target in build final; do
    DOCKER_BUILDKIT=0 docker build --network none --build-arg "BASE_IMAGE=${BASE_TAG}" \
      --target "${target}" -t "$([[ ${target} == build ]] && echo "${BUILD_STAGE_TAG}" || echo "${IMAGE}")" \
      "${context}" >>"${BUILD_LOG_DIR}/image-build.log" 2>&1 ||
      { tail -n 30 "${BUILD_LOG_DIR}/image-build.log" >&2; die "docker build failed (see ${BUILD_LOG_DIR}/image-build.log)"; }
  done
  # The layers of earlier builds that no tag uses any more.
  docker image prune -f >/dev/null 2>&1 || true
  docker save -o "${IMAGE_TAR}.tmp" "${IMAGE}"
  mv "${IMAGE_TAR}.tmp" "${IMAGE_TAR}"
  echo "${key}" >"${IMAGE_KEY_FILE}"
  log "built ${IMAGE} in $((SECONDS - start)) s: ${IMAGE_TAR}"
}

load() {
  [[ -S "${CONTAINERD_SOCK}" ]] || die "the cluster's containerd is not running (make cluster-up MODE=full)"
  current || exit 1
  log "loading ${IMAGE} into the cluster's containerd"
  ctr --address "${CONTAINERD_SOCK}" -n k8s.io images import "${IMAGE_TAR}" >/dev/null
}

main() {
  case "${1:-all}" in
    build) build ;;
    load) load ;;
    all)
      build
      if [[ -S "${CONTAINERD_SOCK}" ]] && is_running containerd; then load; fi
      ;;
    current) current ;;
    docker-stop) docker_stop ;;
    *) die "usage: $0 [build|load|all|current|docker-stop]" ;;
  esac
}

main "$@"
