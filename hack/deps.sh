#!/usr/bin/env bash
# Everything the tests need that is built or downloaded on first use, done before pytest starts
# (`make deps`; `make test` and `make e2e` run it first), so no build ever runs under a test's
# timeout. Each step says what it builds and what it cost cold; a warm run checks the caches in
# a few seconds and builds nothing.
#   host packages      hack/host-deps.sh (apt-get, as root)
#   the cluster        etcd, Kubernetes, CoreDNS, kube-network-policies, helm, the pause and
#                      busybox images (hack/build.sh)
#   the radps image    Debian base, wheels, docker build (hack/image.sh build)
#   the S3 store       SeaweedFS, the tests' object store (hack/build.sh seaweedfs)
#   CASA               casatools in a venv of its own (python -m tests.casa: ~1.3 GB, about a
#                      minute), which reads back the CASA images the tests write
# Without root there is no local node: only the control plane and helm are built, and the tests
# that need a node skip with that reason. RADPS_SKIP_K8S=1 builds nothing for Kubernetes (the
# S3 store is still built: its tests need no cluster).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main() {
  local start=${SECONDS}
  "${HACK_DIR}/host-deps.sh"
  command -v go >/dev/null ||
    die "Go 1.26 is needed to build the local cluster and the S3 store (https://go.dev/dl/)"
  "${HACK_DIR}/build.sh" seaweedfs
  "${REPO_ROOT}/.venv/bin/python" -m tests.casa >/dev/null
  if [[ "${RADPS_SKIP_K8S:-0}" == 1 ]]; then
    log "deps: RADPS_SKIP_K8S=1, nothing to build for Kubernetes"
    return 0
  fi
  if [[ "$(id -u)" == 0 ]]; then
    "${HACK_DIR}/build.sh" all
    "${HACK_DIR}/image.sh" build
  else
    log "deps: not root, so no local node: building the control plane and helm only"
    "${HACK_DIR}/build.sh" control-plane helm
  fi
  log "deps: ready in $((SECONDS - start)) s (cache: ${RADPS_CACHE})"
}

main "$@"
