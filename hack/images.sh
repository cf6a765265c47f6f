#!/usr/bin/env bash
# Container images made without any registry.
#   hack/images.sh pause      the sandbox image (a tiny static Go binary), tarball in the cache
#   hack/images.sh busybox    a busybox image for smoke pods (Debian's busybox-static package,
#                             plus hack/incluster-get)
#   hack/images.sh seaweedfs  the chart's optional object store (objectStore.enabled): the static
#                             weed binary of hack/build.sh seaweedfs, alone in an image
#   hack/images.sh load [TAR...]  import tarballs (default: every one in the cache) into the
#                             cluster's containerd, namespace k8s.io, where the kubelet sees them
# The pause and busybox tags are in versions.env/lib.sh; pods use them with imagePullPolicy
# IfNotPresent/Never since nothing can be pulled.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

mkimage() { python3 "${HACK_DIR}/mkimage.py" "$@"; }

build_pause() {
  local out="${IMAGES_DIR}/pause-${PAUSE_VERSION}.tar"
  [[ -f "${out}" ]] && return 0
  require_build "the ${PAUSE_IMAGE} image"
  first_use "the ${PAUSE_IMAGE} image" "seconds"
  local root
  root="$(mktemp -d)"
  # shellcheck disable=SC2064  # expand now: the variable is local
  trap "rm -rf '${root}'" RETURN
  (cd "${HACK_DIR}/pause" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "${root}/pause" .)
  mkdir -p "${IMAGES_DIR}"
  mkimage --rootfs "${root}" --tag "${PAUSE_IMAGE}" --out "${out}" --entrypoint /pause
}

build_busybox() {
  local out="${IMAGES_DIR}/busybox-${BUSYBOX_VERSION}.tar"
  [[ -f "${out}" ]] && return 0
  require_build "the ${BUSYBOX_IMAGE} image"
  local bb
  bb="$(command -v busybox || true)"
  if [[ -z "${bb}" ]] || ! file_is_static "${bb}"; then
    die "a static busybox is needed (Debian: apt-get install busybox-static)"
  fi
  first_use "the ${BUSYBOX_IMAGE} image" "seconds"
  local root applet
  root="$(mktemp -d)"
  # shellcheck disable=SC2064
  trap "rm -rf '${root}'" RETURN
  mkdir -p "${root}/bin" "${root}/etc" "${root}/tmp" "${root}/www"
  cp "${bb}" "${root}/bin/busybox"
  # A Go helper that calls the API server the way in-cluster clients do (CA-verified TLS).
  (cd "${HACK_DIR}/incluster-get" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" \
    -o "${root}/bin/incluster-get" .)
  for applet in $("${bb}" --list); do
    [[ "${applet}" == busybox ]] || ln -s busybox "${root}/bin/${applet}"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"${root}/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"${root}/etc/group"
  chmod 1777 "${root}/tmp"
  mkdir -p "${IMAGES_DIR}"
  mkimage --rootfs "${root}" --tag "${BUSYBOX_IMAGE}" --out "${out}" --cmd /bin/sh
}

build_seaweedfs_image() {
  local out="${IMAGES_DIR}/seaweedfs-${SEAWEEDFS_IMAGE_VERSION}.tar"
  [[ -f "${out}" ]] && return 0
  [[ -x "${SEAWEEDFS_BIN}/weed" ]] || "${HACK_DIR}/build.sh" seaweedfs
  require_build "the ${SEAWEEDFS_IMAGE} image"
  first_use "the ${SEAWEEDFS_IMAGE} image" "seconds"
  local root
  root="$(mktemp -d)"
  # shellcheck disable=SC2064
  trap "rm -rf '${root}'" RETURN
  mkdir -p "${root}/data" "${root}/tmp"
  cp "${SEAWEEDFS_BIN}/weed" "${root}/weed"
  chmod 1777 "${root}/tmp"
  mkdir -p "${IMAGES_DIR}"
  mkimage --rootfs "${root}" --tag "${SEAWEEDFS_IMAGE}" --out "${out}" --entrypoint /weed
}

# A static binary has no program interpreter: an image without a libc can run it.
file_is_static() { ! grep -q 'ld-linux' <(head -c 4096 "$1" | tr -c '[:print:]' '\n'); }

load() {
  local tars=("$@") t
  ((${#tars[@]})) || tars=("${IMAGES_DIR}"/*.tar)
  [[ -S "${CONTAINERD_SOCK}" ]] || die "the cluster's containerd is not running (make cluster-up MODE=full)"
  for t in "${tars[@]}"; do
    [[ -f "${t}" ]] || continue
    log "importing $(basename "${t}") into containerd"
    ctr --address "${CONTAINERD_SOCK}" -n k8s.io images import "${t}" >/dev/null
  done
}

main() {
  local cmd="${1:-}"
  shift || true
  case "${cmd}" in
    pause) build_pause; [[ $# -eq 0 ]] || main "$@" ;;
    busybox) build_busybox; [[ $# -eq 0 ]] || main "$@" ;;
    seaweedfs) build_seaweedfs_image; [[ $# -eq 0 ]] || main "$@" ;;
    load) load "$@" ;;
    *) die "usage: $0 pause|busybox|seaweedfs|load [TAR...]" ;;
  esac
}

main "$@"
