# PKI and kubeconfigs of the local cluster, made with openssl. Sourced by cluster-up.sh.
# Everything is created once and reused, so restarting the cluster keeps its identity (and
# kubeconfigs that tests already hold stay valid).
# shellcheck shell=bash

# new_cert NAME CN O [SAN]: a key and a CA-signed certificate in ${CERT_DIR}, unless present.
new_cert() {
  local name="$1" cn="$2" org="$3" san="${4:-}"
  [[ -s "${CERT_DIR}/${name}.crt" ]] && return 0
  local subj="/CN=${cn}"
  [[ -n "${org}" ]] && subj="/O=${org}${subj}"
  local ext
  ext="$(mktemp)"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [[ -n "${san}" ]]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=${san}"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"${ext}"
  openssl genrsa -out "${CERT_DIR}/${name}.key" 2048 2>/dev/null
  openssl req -new -key "${CERT_DIR}/${name}.key" -subj "${subj}" -out "${CERT_DIR}/${name}.csr" 2>/dev/null
  openssl x509 -req -in "${CERT_DIR}/${name}.csr" -CA "${CERT_DIR}/ca.crt" -CAkey "${CERT_DIR}/ca.key" \
    -CAcreateserial -days 3650 -sha256 -extfile "${ext}" -out "${CERT_DIR}/${name}.crt" 2>/dev/null
  rm -f "${ext}" "${CERT_DIR}/${name}.csr"
}

gen_pki() {
  mkdir -p "${CERT_DIR}"
  chmod 700 "${CERT_DIR}"
  if [[ ! -s "${CERT_DIR}/ca.crt" ]]; then
    log "generating the cluster CA and certificates in ${CERT_DIR}"
    openssl genrsa -out "${CERT_DIR}/ca.key" 2048 2>/dev/null
    openssl req -x509 -new -key "${CERT_DIR}/ca.key" -subj "/CN=radps-local-ca" -days 3650 -sha256 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -out "${CERT_DIR}/ca.crt" 2>/dev/null
  fi
  # The serving certificate covers loopback, the bridge gateway the API server advertises to
  # pods, and the `kubernetes` Service's ClusterIP and names.
  new_cert apiserver kube-apiserver "" \
    "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:${BRIDGE_IP},IP:${KUBERNETES_SVC_IP}"
  new_cert admin kubernetes-admin system:masters
  new_cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  new_cert controller-manager system:kube-controller-manager ""
  new_cert scheduler system:kube-scheduler ""
  new_cert kubelet "system:node:${NODE_NAME}" system:nodes
  new_cert kube-proxy system:kube-proxy ""
  new_cert coredns system:coredns ""
  new_cert kube-network-policies system:kube-network-policies ""
  # The kubelet's own serving certificate (logs/exec go API server -> kubelet over it).
  new_cert kubelet-serving "${NODE_NAME}" "" "DNS:${NODE_NAME},DNS:localhost,IP:127.0.0.1,IP:${BRIDGE_IP}"
  if [[ ! -s "${CERT_DIR}/sa.key" ]]; then
    openssl genrsa -out "${CERT_DIR}/sa.key" 2048 2>/dev/null
    openssl rsa -in "${CERT_DIR}/sa.key" -pubout -out "${CERT_DIR}/sa.pub" 2>/dev/null
  fi
}

# write_kubeconfig FILE CERT_NAME SERVER: a kubeconfig with the cert embedded, so the file can
# be copied elsewhere (e.g. into a test's environment) and still work.
write_kubeconfig() {
  local file="$1" name="$2" server="$3"
  local ca crt key
  ca="$(base64 -w0 <"${CERT_DIR}/ca.crt")"
  crt="$(base64 -w0 <"${CERT_DIR}/${name}.crt")"
  key="$(base64 -w0 <"${CERT_DIR}/${name}.key")"
  umask 077
  cat >"${file}.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: radps-local
  cluster:
    server: ${server}
    certificate-authority-data: ${ca}
users:
- name: ${name}
  user:
    client-certificate-data: ${crt}
    client-key-data: ${key}
contexts:
- name: radps-local
  context: {cluster: radps-local, user: ${name}}
current-context: radps-local
EOF
  mv "${file}.tmp" "${file}"
}
