#!/usr/bin/env bash
# Print shell exports for using the local cluster and its pinned tools:
#   eval "$(hack/cluster-env.sh)"    # kubectl, helm, KUBECONFIG of the local cluster
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

printf 'export KUBECONFIG=%q\n' "${KUBECONFIG_PATH}"
# $PATH stays unexpanded: it is the caller's PATH.
# shellcheck disable=SC2016
printf 'export PATH=%q:%q:"$PATH"\n' "${KUBE_BIN}" "${HELM_BIN}"
