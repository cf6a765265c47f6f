#!/usr/bin/env bash
# Install the Debian packages the local cluster and `make image` need, when missing.
# Run by `make test` (and so by CI on a fresh machine). Needs root for apt-get; without root it
# only says what is missing (the tests that need a node then skip with that reason).
set -euo pipefail

PACKAGES=(containerd runc containernetworking-plugins iptables conntrack busybox-static
  debootstrap docker.io openssl curl patch)

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "${package}" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("${package}")
done
((${#missing[@]} == 0)) && exit 0
if [[ "$(id -u)" != 0 ]]; then
  echo "host-deps: missing Debian packages (not root, not installing): ${missing[*]}" >&2
  exit 0
fi
echo "host-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
