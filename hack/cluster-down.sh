#!/usr/bin/env bash
# Stop the local cluster and undo what cluster-up did to the machine:
#   - the processes it started (by their PID files, nothing else), and the container shims of
#     its private containerd (found by that containerd's socket path on their command line);
#   - pod sandboxes' network namespaces and every mount under the cluster's state dir;
#   - kube-proxy's iptables chains, kube-network-policies' nftables table (normally deleted by
#     the process itself on SIGTERM), our FORWARD rules, the bridge, the sysctls it changed.
# Cluster data (etcd, images, PKI) stays on disk so the next `up` is fast and keeps its
# identity; `hack/cluster-down.sh --purge` deletes etcd, kubelet and CNI state as well.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PURGE=0
[[ "${1:-}" == --purge || "${PURGE:-0}" == 1 ]] && PURGE=1

# Container shims outlive containerd by design; ours carry our socket path in their arguments.
# Kill the containers' tasks first (through ctr, while containerd still runs), then the shims.
stop_containers() {
  if [[ -S "${CONTAINERD_SOCK}" ]] && is_running containerd; then
    local ctr_=(ctr --address "${CONTAINERD_SOCK}" -n k8s.io) id
    for id in $("${ctr_[@]}" tasks ls -q 2>/dev/null); do
      "${ctr_[@]}" tasks kill -s SIGKILL "${id}" >/dev/null 2>&1 || true
    done
    for id in $("${ctr_[@]}" tasks ls -q 2>/dev/null); do
      "${ctr_[@]}" tasks delete -f "${id}" >/dev/null 2>&1 || true
    done
  fi
}

stop_shims() {
  local dir pid cmdline
  for dir in /proc/[0-9]*; do
    pid="${dir#/proc/}"
    cmdline="$({ tr '\0' ' ' <"/proc/${pid}/cmdline"; } 2>/dev/null || true)"
    if [[ "${cmdline}" == *containerd-shim*"-address ${CONTAINERD_SOCK} "* ]]; then
      log "stopping containerd shim ${pid}"
      kill -KILL "${pid}" 2>/dev/null || true
    fi
  done
}

# The kubelet and kube-proxy add KUBE-* chains (IPv4 and IPv6) and jumps to them from the
# built-in chains. `kube-proxy --cleanup` removes its own; the kubelet has no cleanup, so remove
# whatever KUBE-* is left: first the jumps into those chains, then the chains themselves.
remove_kube_chains() {
  local ipt table line chain
  for ipt in iptables ip6tables; do
    command -v "${ipt}" >/dev/null || continue
    for table in filter nat mangle; do
      "${ipt}" -t "${table}" -S >/dev/null 2>&1 || continue
      while read -r line; do
        # "-A INPUT ... -j KUBE-FIREWALL" -> "-D INPUT ... -j KUBE-FIREWALL" (quotes intact)
        eval "\"${ipt}\" -t ${table} -D ${line#-A }" 2>/dev/null || true
      done < <("${ipt}" -t "${table}" -S | grep -E '^-A [^K][^ ]* .*-j KUBE-')
      for chain in $("${ipt}" -t "${table}" -S | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
        "${ipt}" -t "${table}" -F "${chain}" 2>/dev/null || true
      done
      for chain in $("${ipt}" -t "${table}" -S | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
        "${ipt}" -t "${table}" -X "${chain}" 2>/dev/null || true
      done
    done
  done
}

cleanup_network() {
  if [[ -x "${KUBE_BIN}/kube-proxy" ]] && iptables -t nat -S KUBE-SERVICES >/dev/null 2>&1; then
    log "removing kube-proxy's iptables rules"
    "${KUBE_BIN}/kube-proxy" --cleanup >>"${LOG_DIR}/kube-proxy.log" 2>&1 || true
  fi
  remove_kube_chains
  # kube-network-policies deletes its table when it stops; this catches one left by a killed run.
  local knp="${KNP_BIN}/kube-network-policies" out
  if [[ -x "${knp}" ]]; then
    out="$("${knp}" --cleanup 2>>"${LOG_DIR}/kube-network-policies.log" || true)"
    if [[ "${out}" == deleted* ]]; then log "removed a leftover nftables table: ${out#deleted }"; fi
  fi
  local dir
  for dir in -i -o; do
    while iptables -D FORWARD "${dir}" "${BRIDGE_NAME}" -m comment --comment radps-cluster -j ACCEPT 2>/dev/null; do :; done
  done
  if ip link show "${BRIDGE_NAME}" >/dev/null 2>&1; then
    log "removing bridge ${BRIDGE_NAME}"
    ip link delete "${BRIDGE_NAME}" type bridge
  fi
  # Flush conntrack entries of our ranges so nothing stale points at the gone bridge.
  if command -v conntrack >/dev/null; then
    conntrack -D -s "${POD_CIDR}" >/dev/null 2>&1 || true
    conntrack -D -d "${SERVICE_CIDR}" >/dev/null 2>&1 || true
  fi
  # Sysctls back to what they were before cluster-up.
  local f key
  for f in "${RUN_DIR}"/sysctl.*; do
    [[ -f "${f}" ]] || continue
    key="${f##*/sysctl.}"
    cat "${f}" >"/proc/sys/${key//.//}" 2>/dev/null || true
    rm -f "${f}"
  done
}

main() {
  [[ -d "${RUN_DIR}" ]] || { log "no cluster state in ${RADPS_CLUSTER_DIR}"; return 0; }
  exec 9>"${RUN_DIR}/lock"
  flock -w 60 9 || die "another cluster-up/down is running"
  local full=0
  [[ "$(cat "${RUN_DIR}/mode" 2>/dev/null)" == full || -s "$(pid_file kubelet)" ]] && full=1
  # Node side first, so nothing restarts containers while we remove them. kube-network-policies
  # deletes its nftables table on SIGTERM (a few seconds).
  stop_daemon kube-network-policies
  stop_daemon kube-proxy
  stop_daemon kubelet
  stop_daemon coredns
  if ((full)); then
    stop_containers
  fi
  stop_daemon containerd
  ((full)) && stop_shims
  stop_daemon kube-scheduler
  stop_daemon kube-controller-manager
  stop_daemon kube-apiserver
  stop_daemon etcd
  # Only now: in full mode the API server listens on the bridge address and talks to itself
  # there while it shuts down.
  if ((full)); then
    unmount_below "${RADPS_CLUSTER_DIR}"  # pod volumes, rootfs overlays, /dev/shm, netns
    cleanup_network
  fi
  rm -f "${RUN_DIR}/mode"
  if ((PURGE)); then
    log "purging cluster state (etcd, kubelet, CNI)"
    rm -rf "${DATA_DIR}/etcd" "${KUBELET_ROOT}" "${DATA_DIR}/cni"
  fi
  # Host-local IPAM leases are per-run state: pods get new addresses on the next start.
  rm -rf "${DATA_DIR}/cni/ipam"
  log "cluster down"
}

main "$@"
