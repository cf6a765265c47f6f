#!/usr/bin/env bash
# Bring up the local single-node Kubernetes cluster, the way upstream's local-up-cluster does:
# plain processes on this machine, no VMs, no images from any registry.
#   hack/cluster-up.sh control-plane   etcd + kube-apiserver + kube-controller-manager
#   hack/cluster-up.sh full            + kube-scheduler, containerd, kubelet, bridge CNI,
#                                        kube-proxy, kube-network-policies (NetworkPolicy
#                                        enforcement), CoreDNS (needs root)
# Idempotent: components already running (PID files in the state dir) are left alone, so `up`
# on a running cluster is a no-op; `up full` on a control-plane cluster adds the node.
# Prints the kubeconfig path on stdout as its last line.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "${HACK_DIR}/pki.sh"

MODE="${1:-${MODE:-control-plane}}"

# The address the API server listens on and clients use. In full mode it is the bridge
# gateway, because the API server refuses a loopback address as the endpoint of the
# `kubernetes` Service and pods must reach it; the host reaches that address too.
api_host() { if [[ "${MODE}" == full ]]; then echo "${BRIDGE_IP}"; else echo 127.0.0.1; fi; }
api_url() { echo "https://$(api_host):${API_PORT}"; }

kubectl_admin() { "$(kubectl_bin)" --kubeconfig "${KUBECONFIG_PATH}" "$@"; }

check_prereqs() {
  local c missing=()
  for c in openssl python3 curl flock; do command -v "${c}" >/dev/null || missing+=("${c}"); done
  if [[ "${MODE}" == full ]]; then
    [[ "$(id -u)" == 0 ]] || die "full mode needs root (it creates a bridge, iptables rules, mounts)"
    for c in containerd runc ctr iptables conntrack ip; do
      command -v "${c}" >/dev/null || missing+=("${c}")
    done
    [[ -x "$(cni_bin_dir)/bridge" ]] || missing+=("containernetworking-plugins")
  fi
  ((${#missing[@]} == 0)) || die "missing: ${missing[*]} (Debian: apt-get install containerd runc \
containernetworking-plugins iptables conntrack busybox-static)"
}

# The ranges must not collide with anything this machine already routes or resolves through,
# or the cluster would capture real traffic.
check_cidrs() {
  python3 - "${POD_CIDR}" "${SERVICE_CIDR}" "${BRIDGE_NAME}" <<'EOF'
import ipaddress, re, subprocess, sys
pod, svc, bridge = (ipaddress.ip_network(sys.argv[1]), ipaddress.ip_network(sys.argv[2]), sys.argv[3])
if pod.overlaps(svc):
    sys.exit(f"pod range {pod} overlaps service range {svc}")
taken = []
for line in subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout.splitlines():
    f = line.split()
    if f[1] != bridge and f[1] != "lo":
        taken.append((f[1], ipaddress.ip_interface(f[3]).network))
try:
    for line in open("/etc/resolv.conf"):
        m = re.match(r"\s*nameserver\s+(\d+\.\d+\.\d+\.\d+)", line)
        if m:
            taken.append(("resolver", ipaddress.ip_network(m.group(1) + "/32")))
except OSError:
    pass
for name, net in taken:
    for ours in (pod, svc):
        if ours.overlaps(net):
            sys.exit(f"{ours} overlaps {net} ({name}); set RADPS_POD_CIDR / RADPS_SERVICE_CIDR")
EOF
}

# ---- control plane ---------------------------------------------------------------------------

start_etcd() {
  mkdir -p "${DATA_DIR}/etcd"
  chmod 700 "${DATA_DIR}/etcd"
  # Plain HTTP on loopback only: nothing but the API server talks to it.
  start_daemon etcd "$(etcd_bin)" \
    --name radps --data-dir "${DATA_DIR}/etcd" \
    --listen-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORT}" \
    --advertise-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORT}" \
    --listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-cluster "radps=http://127.0.0.1:${ETCD_PEER_PORT}" \
    --listen-metrics-urls "" --log-level warn \
    --quota-backend-bytes 2147483648 --snapshot-count 10000
  wait_ready etcd 30 curl -fsS "http://127.0.0.1:${ETCD_CLIENT_PORT}/health"
}

start_apiserver() {
  local advertise=()
  # With a loopback bind the API server picks the host's primary address as the `kubernetes`
  # endpoint (only an Endpoints object: nothing connects to it without a node). In full mode
  # it is the bridge gateway.
  [[ "${MODE}" == full ]] && advertise=(--advertise-address "${BRIDGE_IP}")
  start_daemon kube-apiserver "${KUBE_BIN}/kube-apiserver" \
    --bind-address "$(api_host)" --secure-port "${API_PORT}" "${advertise[@]}" \
    --etcd-servers "http://127.0.0.1:${ETCD_CLIENT_PORT}" \
    --cert-dir "${CERT_DIR}" \
    --tls-cert-file "${CERT_DIR}/apiserver.crt" --tls-private-key-file "${CERT_DIR}/apiserver.key" \
    --client-ca-file "${CERT_DIR}/ca.crt" \
    --kubelet-client-certificate "${CERT_DIR}/apiserver-kubelet-client.crt" \
    --kubelet-client-key "${CERT_DIR}/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "${CERT_DIR}/ca.crt" \
    --kubelet-preferred-address-types InternalIP \
    --service-account-key-file "${CERT_DIR}/sa.pub" \
    --service-account-signing-key-file "${CERT_DIR}/sa.key" \
    --service-account-issuer "https://kubernetes.default.svc.cluster.local" \
    --service-cluster-ip-range "${SERVICE_CIDR}" \
    --authorization-mode Node,RBAC \
    --allow-privileged=true \
    --profiling=false \
    --v 1
  wait_ready kube-apiserver 90 kubectl_admin get --raw /readyz
}

start_controller_manager() {
  local kc="${RADPS_CLUSTER_DIR}/controller-manager.kubeconfig"
  start_daemon kube-controller-manager "${KUBE_BIN}/kube-controller-manager" \
    --kubeconfig "${kc}" --authentication-kubeconfig "${kc}" --authorization-kubeconfig "${kc}" \
    --bind-address 127.0.0.1 --secure-port "${KCM_PORT}" \
    --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file "${CERT_DIR}/sa.key" \
    --root-ca-file "${CERT_DIR}/ca.crt" \
    --cluster-signing-cert-file "${CERT_DIR}/ca.crt" --cluster-signing-key-file "${CERT_DIR}/ca.key" \
    --service-cluster-ip-range "${SERVICE_CIDR}" \
    --profiling=false \
    --v 1
  # The namespace and service-account controllers run: new namespaces get their `default`
  # service account, which pods and tests rely on.
  wait_ready kube-controller-manager 60 curl -fsSk "https://127.0.0.1:${KCM_PORT}/healthz"
}

write_kubeconfigs() {
  local server
  server="$(api_url)"
  write_kubeconfig "${KUBECONFIG_PATH}" admin "${server}"
  write_kubeconfig "${RADPS_CLUSTER_DIR}/controller-manager.kubeconfig" controller-manager "${server}"
  write_kubeconfig "${RADPS_CLUSTER_DIR}/scheduler.kubeconfig" scheduler "${server}"
  write_kubeconfig "${RADPS_CLUSTER_DIR}/kubelet.kubeconfig" kubelet "${server}"
  write_kubeconfig "${RADPS_CLUSTER_DIR}/kube-proxy.kubeconfig" kube-proxy "${server}"
  write_kubeconfig "${RADPS_CLUSTER_DIR}/coredns.kubeconfig" coredns "${server}"
  write_kubeconfig "${RADPS_CLUSTER_DIR}/kube-network-policies.kubeconfig" kube-network-policies \
    "${server}"
}

# The control plane listens on loopback in control-plane mode and on the bridge in full mode;
# moving from one to the other restarts the API server and its clients.
switch_mode_if_needed() {
  local previous
  previous="$(cat "${RUN_DIR}/mode" 2>/dev/null || true)"
  if [[ -n "${previous}" && "${previous}" != "${MODE}" ]] && is_running kube-apiserver; then
    if [[ "${previous}" == full ]]; then
      log "cluster is running in full mode (a superset of control-plane): nothing to do"
      MODE=full
      return
    fi
    log "switching from ${previous} to ${MODE}: restarting the API server on $(api_host)"
    stop_daemon kube-controller-manager
    stop_daemon kube-apiserver
  fi
}

# ---- node ------------------------------------------------------------------------------------

# Record a sysctl's value before changing it so cluster-down can restore it.
set_sysctl() {
  local key="$1" value="$2" file="/proc/sys/${1//.//}"
  [[ -w "${file}" ]] || return 0
  if [[ ! -f "${RUN_DIR}/sysctl.${key}" ]]; then cat "${file}" >"${RUN_DIR}/sysctl.${key}"; fi
  echo "${value}" >"${file}"
}

setup_network() {
  if ! ip link show "${BRIDGE_NAME}" >/dev/null 2>&1; then
    log "creating bridge ${BRIDGE_NAME} ${BRIDGE_IP}/${POD_CIDR#*/}"
    ip link add "${BRIDGE_NAME}" type bridge
    ip addr add "${BRIDGE_IP}/${POD_CIDR#*/}" dev "${BRIDGE_NAME}"
  fi
  ip link set "${BRIDGE_NAME}" up
  # Pods reach Services through the host's NAT rules: forwarding on, and bridged traffic seen
  # by iptables so pod -> ClusterIP -> pod on the same bridge gets un-NATed on the way back.
  set_sysctl net.ipv4.ip_forward 1
  # Also what makes NetworkPolicy work between pods on the bridge: kube-network-policies sees
  # bridged packets only through br_netfilter (built in on some kernels, a module on others).
  if [[ ! -e /proc/sys/net/bridge ]] && command -v modprobe >/dev/null; then
    modprobe br_netfilter 2>/dev/null || true
  fi
  [[ -e /proc/sys/net/bridge ]] ||
    log "warning: no br_netfilter: Services and NetworkPolicy between pods on ${BRIDGE_NAME} will not work"
  set_sysctl net.bridge.bridge-nf-call-iptables 1
  # Accept forwarding from/to our bridge even where the FORWARD policy is DROP (Docker sets
  # that). Tagged with a comment so cluster-down removes exactly these.
  local dir
  for dir in -i -o; do
    iptables -C FORWARD "${dir}" "${BRIDGE_NAME}" -m comment --comment radps-cluster -j ACCEPT 2>/dev/null ||
      iptables -I FORWARD 1 "${dir}" "${BRIDGE_NAME}" -m comment --comment radps-cluster -j ACCEPT
  done
  mkdir -p "${DATA_DIR}/cni/net.d"
  # One bridge, host-local IPAM with its state in our data dir; no masquerade: nothing in the
  # cluster talks to the outside.
  write_config "${DATA_DIR}/cni/net.d/10-radps.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "radps",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${BRIDGE_NAME}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "${DATA_DIR}/cni/ipam",
        "ranges": [[{"subnet": "${POD_CIDR}", "gateway": "${BRIDGE_IP}"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF
}

start_containerd() {
  mkdir -p "${CONTAINERD_ROOT}" "${CONTAINERD_STATE}"
  # A private containerd (own socket, root and state) so that Docker's or anyone else's is
  # untouched. restrict_oom_score_adj: root here lacks CAP_SYS_RESOURCE, and without it every
  # sandbox fails ("can't get final child's PID from pipe: EOF"). netns under the state dir
  # so cluster-down finds and unmounts them.
  write_config "${RUN_DIR}/config/containerd/config.toml" <<EOF
version = 2
root = "${CONTAINERD_ROOT}"
state = "${CONTAINERD_STATE}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "${CONTAINERD_SOCK}"
[ttrpc]
  address = "${CONTAINERD_SOCK}.ttrpc"
[debug]
  level = "warn"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "${CONTAINERD_ROOT}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$(cni_bin_dir)"
    conf_dir = "${DATA_DIR}/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
EOF
  start_daemon containerd containerd --config "${RUN_DIR}/config/containerd/config.toml"
  wait_ready containerd 30 ctr --address "${CONTAINERD_SOCK}" version
  # Import the locally built images once (pause is the sandbox image; nothing can be pulled).
  local present
  present="$(ctr --address "${CONTAINERD_SOCK}" -n k8s.io images ls -q)"
  grep -qxF "${PAUSE_IMAGE}" <<<"${present}" ||
    "${HACK_DIR}/images.sh" load "${IMAGES_DIR}/pause-${PAUSE_VERSION}.tar"
  grep -qxF "${BUSYBOX_IMAGE}" <<<"${present}" ||
    "${HACK_DIR}/images.sh" load "${IMAGES_DIR}/busybox-${BUSYBOX_VERSION}.tar"
  if [[ -f "${IMAGES_DIR}/seaweedfs-${SEAWEEDFS_IMAGE_VERSION}.tar" ]]; then
    grep -qxF "${SEAWEEDFS_IMAGE}" <<<"${present}" ||
      "${HACK_DIR}/images.sh" load "${IMAGES_DIR}/seaweedfs-${SEAWEEDFS_IMAGE_VERSION}.tar"
  fi
}

start_kubelet() {
  mkdir -p "${KUBELET_ROOT}"
  write_config "${RUN_DIR}/config/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${BRIDGE_IP}
port: ${KUBELET_PORT}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: ${KUBELET_HEALTHZ_PORT}
containerRuntimeEndpoint: unix://${CONTAINERD_SOCK}
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ${CERT_DIR}/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: ${CERT_DIR}/kubelet-serving.crt
tlsPrivateKeyFile: ${CERT_DIR}/kubelet-serving.key
clusterDomain: cluster.local
clusterDNS: [${DNS_SVC_IP}]
# This machine: cgroup v1 with the cgroupfs driver (containerd 1.x cannot report its driver),
# swap may be on.
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
memorySwap: {}
# A test cluster on a shared disk: never evict for disk pressure, never GC our local images
# (they cannot be pulled back).
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
rotateCertificates: false
serverTLSBootstrap: false
protectKernelDefaults: false
maxPods: 110
hairpinMode: hairpin-veth
EOF
  start_daemon kubelet "${KUBE_BIN}/kubelet" \
    --config "${RUN_DIR}/config/kubelet/config.yaml" \
    --kubeconfig "${RADPS_CLUSTER_DIR}/kubelet.kubeconfig" \
    --root-dir "${KUBELET_ROOT}" \
    --cert-dir "${KUBELET_ROOT}/pki" \
    --hostname-override "${NODE_NAME}" \
    --node-ip "${BRIDGE_IP}" \
    --v 1
}

start_scheduler() {
  local kc="${RADPS_CLUSTER_DIR}/scheduler.kubeconfig"
  start_daemon kube-scheduler "${KUBE_BIN}/kube-scheduler" \
    --kubeconfig "${kc}" --authentication-kubeconfig "${kc}" --authorization-kubeconfig "${kc}" \
    --bind-address 127.0.0.1 --secure-port "${SCHEDULER_PORT}" --leader-elect=false --profiling=false --v 1
}

start_kube_proxy() {
  # Its own folder: kube-proxy exits when anything changes its config file.
  write_config "${RUN_DIR}/config/kube-proxy/config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: ${RADPS_CLUSTER_DIR}/kube-proxy.kubeconfig
hostnameOverride: ${NODE_NAME}
clusterCIDR: ${POD_CIDR}
bindAddress: ${BRIDGE_IP}
healthzBindAddress: 127.0.0.1:${PROXY_HEALTHZ_PORT}
metricsBindAddress: 127.0.0.1:${PROXY_METRICS_PORT}
# NodePorts only on the bridge address, never on the machine's real interfaces.
nodePortAddresses: ["${BRIDGE_IP}/32"]
iptables:
  localhostNodePorts: false
# Leave the host's conntrack sysctls alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
  start_daemon kube-proxy "${KUBE_BIN}/kube-proxy" --config "${RUN_DIR}/config/kube-proxy/config.yaml" --v 1
}

# NetworkPolicy enforcement (sigs.k8s.io/kube-network-policies, patched: see
# hack/patches/): a host process like kube-proxy, with its own identity and RBAC
# (apply_cluster_addons). It installs the nftables table `inet kube-network-policies` that sends
# the first packet of each connection to or from a pod that a NetworkPolicy selects to NFQUEUE,
# and gives the verdict in userspace; SIGTERM (cluster-down) deletes the table again. Pod IPs come
# from the API (no NRI in containerd 1.6); kernel >= 6.12, so no DNS workaround.
start_kube_network_policies() {
  start_daemon kube-network-policies "${KNP_BIN}/kube-network-policies" \
    --kubeconfig "${RADPS_CLUSTER_DIR}/kube-network-policies.kubeconfig" \
    --hostname-override "${NODE_NAME}" \
    --metrics-bind-address "127.0.0.1:${NETPOL_METRICS_PORT}" \
    --netfilter-bug-1766-fix=false \
    --disable-nri \
    --v "${RADPS_NETPOL_V:-1}"
  wait_ready kube-network-policies 30 curl -fsS -o /dev/null "http://127.0.0.1:${NETPOL_METRICS_PORT}/metrics"
}

# CoreDNS runs on the host (a process we start and stop by PID, like the rest), answering on
# the bridge gateway; the kube-dns Service at ${DNS_SVC_IP} points there through a
# selector-less EndpointSlice. It serves the cluster zones only and forwards nothing.
start_coredns() {
  write_config "${RUN_DIR}/config/coredns/Corefile" <<EOF
cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind ${BRIDGE_IP}
    errors
    health 127.0.0.1:${COREDNS_HEALTH_PORT}
    ready 127.0.0.1:${COREDNS_READY_PORT}
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig ${RADPS_CLUSTER_DIR}/coredns.kubeconfig radps-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    cache 5
}
EOF
  start_daemon coredns "${COREDNS_BIN}/coredns" -conf "${RUN_DIR}/config/coredns/Corefile"
  wait_ready coredns 60 curl -fsS "http://127.0.0.1:${COREDNS_READY_PORT}/ready"
}

apply_cluster_addons() {
  kubectl_admin apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns", labels: {app.kubernetes.io/managed-by: radps-hack}}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns", labels: {app.kubernetes.io/managed-by: radps-hack}}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:coredns"}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:kube-network-policies", labels: {app.kubernetes.io/managed-by: radps-hack}}
rules:
- apiGroups: [""]
  resources: [pods, namespaces]
  verbs: [get, list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:kube-network-policies", labels: {app.kubernetes.io/managed-by: radps-hack}}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:kube-network-policies"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:kube-network-policies"}
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns, kubernetes.io/name: CoreDNS, app.kubernetes.io/managed-by: radps-hack}
spec:
  clusterIP: ${DNS_SVC_IP}
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-host
  namespace: kube-system
  labels: {kubernetes.io/service-name: kube-dns, endpointslice.kubernetes.io/managed-by: radps-hack}
addressType: IPv4
ports:
- {name: dns, port: 53, protocol: UDP}
- {name: dns-tcp, port: 53, protocol: TCP}
endpoints:
- addresses: ["${BRIDGE_IP}"]
  conditions: {ready: true}
EOF
}

node_ready() {
  [[ "$(kubectl_admin get node "${NODE_NAME}" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

# ---- main ------------------------------------------------------------------------------------

main() {
  case "${MODE}" in control-plane | full) ;; *) die "MODE must be control-plane or full" ;; esac
  local start=${SECONDS}
  check_prereqs
  "${HACK_DIR}/build.sh" "${MODE}"
  mkdir -p "${RUN_DIR}" "${LOG_DIR}" "${DATA_DIR}"
  exec 9>"${RUN_DIR}/lock"
  flock -n 9 || die "another cluster-up/down is running"
  switch_mode_if_needed
  check_cidrs
  gen_pki
  write_kubeconfigs
  [[ "${MODE}" == full ]] && setup_network
  start_etcd
  start_apiserver
  start_controller_manager
  if [[ "${MODE}" == full ]]; then
    start_scheduler
    start_containerd
    start_kubelet
    start_kube_proxy
    apply_cluster_addons  # before kube-network-policies: its RBAC
    start_kube_network_policies
    start_coredns
    wait_for "node ${NODE_NAME} Ready" 120 node_ready
    local d
    for d in kube-scheduler kubelet kube-proxy kube-network-policies; do
      is_running "${d}" || die "${d} exited (log: ${LOG_DIR}/${d}.log)"
    done
  fi
  echo "${MODE}" >"${RUN_DIR}/mode"
  log "cluster (${MODE}) up in $((SECONDS - start)) s; logs in ${LOG_DIR}"
  log "export KUBECONFIG=${KUBECONFIG_PATH}"
  echo "${KUBECONFIG_PATH}"
}

main "$@"
