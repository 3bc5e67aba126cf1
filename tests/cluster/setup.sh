#!/usr/bin/env bash
# Debian packages the `cluster` tests need (run as root; .ci/cluster calls it).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
packages=(openssh-server openssh-client iproute2 util-linux procps
          podman buildah runc debootstrap slurm-wlm munge
          docker-compose golang-github-containernetworking-plugin-dnsname)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# slurm-wlm and openssh-server start daemons of their own on install where systemd runs;
# the tests start their own, inside their namespaces.
