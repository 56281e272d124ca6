#!/usr/bin/env bash
# Install what the Vagrant backend's tests need on a Debian 12 host, idempotently: Vagrant with
# its libvirt plugin, QEMU (software emulation is enough), libvirt's daemons, the tools that
# build the test box (debootstrap, extlinux, fdisk), iptables and dnsmasq for libvirt's
# networks, and shellcheck for the provisioning scripts. Only Debian packages, through apt.
#
# The image may carry qemu-utils 10 from backports, which conflicts with bookworm's
# qemu-system-x86: bookworm's qemu-utils is installed in the same command (a downgrade).
set -euo pipefail

QEMU_UTILS_VERSION="1:7.2+dfsg-7+deb12u18+b3"
PACKAGES=(qemu-system-x86 libvirt-daemon-system libvirt-clients vagrant vagrant-libvirt
          debootstrap iptables dnsmasq-base extlinux fdisk shellcheck iputils-ping
          iproute2 openssh-client rsync util-linux)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
# qemu-utils must be bookworm's 7.2 (any point release of it), not the backports one.
need_downgrade=0
case "$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)" in
  1:7.2+dfsg*) ;;
  *) need_downgrade=1 ;;
esac
if [ "${#missing[@]}" -eq 0 ] && [ "$need_downgrade" -eq 0 ]; then
  exit 0
fi

args=("${missing[@]}")
if [ "$need_downgrade" -eq 1 ]; then
  # Pick the exact bookworm build apt offers (its name changes with point releases).
  v="$(apt-cache madison qemu-utils 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); print $2}' | grep '^1:7\.2+dfsg' | head -n1 || true)"
  if [ -z "$v" ]; then
    apt-get update -qq
    v="$(apt-cache madison qemu-utils | awk -F'|' '{gsub(/ /,"",$2); print $2}' | grep '^1:7\.2+dfsg' | head -n1 || true)"
  fi
  args+=("qemu-utils=${v:-$QEMU_UTILS_VERSION}")
fi
echo "==> installing Debian packages: ${args[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq --no-install-recommends --allow-downgrades "${args[@]}" >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends --allow-downgrades "${args[@]}" >/dev/null
fi
