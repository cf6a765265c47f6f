#!/usr/bin/env bash
# Show which of the local cluster's processes run, and the API server's view of it.
# Exit status 0 when the API server is ready, 1 otherwise.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main() {
  local mode name
  mode="$(cat "${RUN_DIR}/mode" 2>/dev/null || echo down)"
  echo "mode:       ${mode}"
  echo "state dir:  ${RADPS_CLUSTER_DIR}"
  echo "kubeconfig: ${KUBECONFIG_PATH}"
  echo "logs:       ${LOG_DIR}"
  for name in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet \
    kube-proxy kube-network-policies coredns; do
    if is_running "${name}"; then
      printf '  %-24s running (pid %s)\n' "${name}" "$(cat "$(pid_file "${name}")")"
    elif [[ -e "$(pid_file "${name}")" ]]; then
      printf '  %-24s DEAD (stale pid file; see %s)\n' "${name}" "${LOG_DIR}/${name}.log"
    fi
  done
  local kubectl=("$(kubectl_bin)" --kubeconfig "${KUBECONFIG_PATH}" --request-timeout 5s)
  if [[ -f "${KUBECONFIG_PATH}" ]] && "${kubectl[@]}" get --raw /readyz >/dev/null 2>&1; then
    echo "api server: ready ($("${kubectl[@]}" get --raw /version | python3 -c 'import json,sys; print(json.load(sys.stdin)["gitVersion"])'))"
    "${kubectl[@]}" get nodes -o wide 2>/dev/null || true
    return 0
  fi
  echo "api server: not reachable"
  return 1
}

main "$@"
