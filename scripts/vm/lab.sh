#!/usr/bin/env bash
# Run a private libvirt (virtlogd + libvirtd) inside a network namespace, for the VM tests.
#
#   lab.sh up NETNS STATE     start the daemons inside NETNS, all their files under STATE
#   lab.sh down STATE         stop them (by PID) and remove every trace, also after a failed up
#   lab.sh enter STATE CMD…   run CMD inside the lab (its network and mount namespaces)
#
# libvirtd's paths (/etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt,
# /var/cache/libvirt) are global files, so the daemons run in a private mount namespace (kept
# in STATE/mntns) where STATE's subfolders are bind-mounted over those paths: two labs, or a
# lab and the host's own libvirtd, never share a socket, a network definition or a disk, and
# `down` leaves nothing behind. /sys is remounted in that namespace so that it shows NETNS's
# interfaces (as `ip netns exec` does), without the host's cgroup mounts (libvirt is told
# to use no cgroups). The host-wide copy of libvirt's configuration is used
# without its network definitions, so no NAT network (`default`) is ever started.
# Daemons are started with explicit PID files and stopped by PID, never by name.
set -euo pipefail

die() { echo "lab.sh: $*" >&2; exit 1; }
say() { printf '==> lab.sh: %s\n' "$*" >&2; }
[ "$(id -u)" -eq 0 ] || die "must run as root"

# Paths libvirt uses, and the STATE subfolder that replaces each one inside the lab.
MAPS=(
  "etc:/etc/libvirt"
  "run:/run/libvirt"
  "lib:/var/lib/libvirt"
  "log:/var/log/libvirt"
  "cache:/var/cache/libvirt"
)

enter() {
  local state="$1"; shift
  local ns; ns="$(cat "$state/netns")"
  exec nsenter --mount="$state/mntns" --net="/run/netns/$ns" -- "$@"
}

# stop_pid FILE: stop the process whose PID FILE holds (TERM, then KILL after 10 s), if it
# is still the process that was started (same executable as recorded next to the PID).
stop_pid() {
  local file="$1" pid exe
  [ -s "$file" ] || return 0
  pid="$(tr -dc '0-9' < "$file")"
  [ -n "$pid" ] || return 0
  if [ -e "/proc/$pid" ]; then
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
    if [ -f "$file.exe" ] && [ "$exe" != "$(cat "$file.exe")" ]; then
      return 0  # the PID was reused by something else
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do [ -e "/proc/$pid" ] || break; sleep 0.1; done
    if [ -e "/proc/$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  return 0
}

# wait_pidfile FILE: wait up to 20 s for a daemon to write its PID file; record its executable.
wait_pidfile() {
  local file="$1"
  for _ in $(seq 1 200); do
    if [ -s "$file" ]; then
      readlink "/proc/$(tr -dc '0-9' < "$file")/exe" > "$file.exe" 2>/dev/null || true
      return 0
    fi
    sleep 0.1
  done
  return 1
}

up() {
  local ns="$1" state="$2" dst
  [ -e "/run/netns/$ns" ] || die "network namespace $ns does not exist"
  [ ! -e "$state/mntns" ] || die "$state already holds a lab (run: lab.sh down $state)"
  mkdir -p "$state"
  chmod 0755 "$state"  # qemu (user libvirt-qemu) reads the disks below it
  state="$(cd "$state" && pwd)"
  echo "$ns" > "$state/netns"

  # Fresh libvirt folders: configuration files without any network or domain definition.
  mkdir -p "$state/etc/qemu/networks/autostart" "$state/run" "$state/log/qemu" "$state/cache"
  cp -p /etc/libvirt/*.conf "$state/etc/"
  # No cgroups for the VMs: they would be host-wide state (and /sys here is the namespace's).
  printf '\n# homelab test lab: no cgroups\ncgroup_controllers = [ ]\n' >> "$state/etc/qemu.conf"
  mkdir -p "$state/lib/images" "$state/lib/boot" "$state/lib/qemu/channel" "$state/lib/dnsmasq"
  chown libvirt-qemu:libvirt-qemu "$state/lib/qemu" "$state/lib/qemu/channel"
  chmod 0750 "$state/lib/qemu" "$state/lib/qemu/channel"
  chmod 0711 "$state/lib/images" "$state/lib/boot"

  # Mount points must exist on the host; remember the ones this created, to remove them.
  : > "$state/created-dirs"
  for m in "${MAPS[@]}"; do
    dst="${m#*:}"
    if [ ! -d "$dst" ]; then mkdir -p "$dst"; echo "$dst" >> "$state/created-dirs"; fi
  done

  # A persistent private mount namespace, bound to $state/mntns (the bind needs a private
  # mount above it).
  mount --bind "$state" "$state"
  mount --make-private "$state"
  touch "$state/mntns"
  unshare --mount="$state/mntns" --propagation private true
  # shellcheck disable=SC2016 # the inner script expands its own arguments
  nsenter --mount="$state/mntns" --net="/run/netns/$ns" -- sh -eu -c '
    umount -l /sys
    mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
    state="$1"; shift
    for m in "$@"; do mount --bind "$state/${m%%:*}" "${m#*:}"; done
  ' sh "$state" "${MAPS[@]}"

  # Without this libvirt re-probes QEMU forever and `vagrant up` hangs at "Creating domain".
  if [ -e /dev/kvm ]; then chgrp kvm /dev/kvm && chmod 0660 /dev/kvm; fi

  say "starting virtlogd and libvirtd in $ns (state in $state)"
  nsenter --mount="$state/mntns" --net="/run/netns/$ns" -- \
    virtlogd --pid-file "$state/virtlogd.pid" </dev/null >"$state/virtlogd.out" 2>&1 &
  wait_pidfile "$state/virtlogd.pid" || die "virtlogd did not start: $(tail -n 5 "$state/virtlogd.out")"
  nsenter --mount="$state/mntns" --net="/run/netns/$ns" -- \
    libvirtd --pid-file "$state/libvirtd.pid" </dev/null >"$state/libvirtd.out" 2>&1 &
  wait_pidfile "$state/libvirtd.pid" || die "libvirtd did not start: $(tail -n 5 "$state/libvirtd.out")"
  for _ in $(seq 1 300); do
    if nsenter --mount="$state/mntns" --net="/run/netns/$ns" -- \
        virsh -q -c qemu:///system version >/dev/null 2>&1; then
      say "libvirtd ready"
      return 0
    fi
    sleep 0.1
  done
  die "libvirtd does not answer: $(tail -n 5 "$state/libvirtd.out")"
}

down() {
  local state="$1" ns n pidf
  [ -d "$state" ] || return 0
  state="$(cd "$state" && pwd)"
  if [ -e "$state/mntns" ] && [ -f "$state/libvirtd.pid" ] && [ -e "/run/netns/$(cat "$state/netns")" ]; then
    ns="$(cat "$state/netns")"
    # Whatever the tests left: domains with their disks, then networks.
    v() { timeout 30 nsenter --mount="$state/mntns" --net="/run/netns/$ns" -- virsh -q -c qemu:///system "$@" 2>/dev/null; }
    for n in $(v list --all --name || true); do
      v destroy "$n" >/dev/null || true
      v undefine "$n" --remove-all-storage --nvram >/dev/null || v undefine "$n" --remove-all-storage >/dev/null || true
    done
    for n in $(v net-list --all --name || true); do
      v net-destroy "$n" >/dev/null || true
      v net-undefine "$n" >/dev/null || true
    done
  fi
  # Children libvirt started (qemu, dnsmasq) by their PID files, then the daemons themselves.
  for pidf in "$state"/run/qemu/*.pid "$state"/run/network/*.pid; do
    [ -f "$pidf" ] && stop_pid "$pidf"
  done
  stop_pid "$state/libvirtd.pid"
  stop_pid "$state/virtlogd.pid"
  if [ -e "$state/mntns" ]; then
    umount "$state/mntns" 2>/dev/null || umount -l "$state/mntns" 2>/dev/null || true
  fi
  if mountpoint -q "$state"; then umount "$state" 2>/dev/null || umount -l "$state" || true; fi
  if [ -f "$state/created-dirs" ]; then
    while read -r d; do rmdir "$d" 2>/dev/null || true; done < "$state/created-dirs"
  fi
  rm -rf "$state"
}

case "${1:-}" in
  up) [ $# -eq 3 ] || die "usage: lab.sh up NETNS STATE"; up "$2" "$3" ;;
  down) [ $# -eq 2 ] || die "usage: lab.sh down STATE"; down "$2" ;;
  enter) [ $# -ge 3 ] || die "usage: lab.sh enter STATE CMD..."; s="$2"; shift 2; enter "$s" "$@" ;;
  *) die "usage: lab.sh up NETNS STATE | down STATE | enter STATE CMD..." ;;
esac
