#!/usr/bin/env bash
# Build the Vagrant box the VM tests boot (no box can be downloaded here), once per machine:
# a minimal Debian bookworm made with debootstrap from Debian's package mirror, with a `vagrant`
# user (passwordless sudo, Vagrant's insecure public key from the installed vagrant gem),
# classic interface names, DHCP on eth0 with ifupdown (the client identifies by MAC, so no
# machine-wide identity is baked in), a small initramfs and extlinux on a one-partition disk,
# converted to qcow2 and packed as a vagrant-libvirt box.
#
# The guest boots with sysvinit, not systemd: under QEMU software emulation on a busy 2-core
# host, systemd's boot alone took over a minute; sysvinit's takes seconds. Vagrant's Debian
# guest support handles it (hostname with `hostname`, networks in /etc/network/interfaces).
#
# Usage: build-box.sh            prints the path of the .box on stdout
# The result is cached under $HOMELAB_BOX_CACHE (default <repo>/.cache/vm-box/) keyed by a hash
# of this script and of Vagrant's insecure key, so reruns on the same machine cost nothing;
# concurrent builds wait on a lock; older cached builds are removed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SUITE="bookworm"
MIRROR="${HOMELAB_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
INSECURE_KEY="/usr/share/rubygems-integration/all/gems/vagrant-$(dpkg-query -W -f='${Version}' vagrant | sed 's/[+-].*//')/keys/vagrant.pub"
KEY_HASH="$(sha256sum "$INSECURE_KEY" | cut -c1-16)"
HASH="$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)"
CACHE_BASE="${HOMELAB_BOX_CACHE:-$ROOT/.cache/vm-box}"
CACHE="$CACHE_BASE/$HASH-$KEY_HASH"
BOX="$CACHE/homelab-test.box"

say() { printf '==> build-box: %s\n' "$*" >&2; }

mkdir -p "$CACHE_BASE"
exec 9>"$CACHE_BASE/.lock"
flock 9
if [ -f "$CACHE/ready" ] && [ -f "$BOX" ]; then
  echo "$BOX"
  exit 0
fi

WORK="$(mktemp -d "$CACHE_BASE/.work.XXXXXX")"
MNT="$WORK/mnt"
LOOP=""
cleanup() {
  set +e
  for m in "$WORK/root/proc" "$WORK/root/sys" "$WORK/root/dev/pts" "$WORK/root/dev" "$MNT"; do
    mountpoint -q "$m" 2>/dev/null && umount -l "$m"
  done
  [ -n "$LOOP" ] && losetup -d "$LOOP"
  rm -rf "$WORK"
}
trap cleanup EXIT

start=$(date +%s)
say "debootstrap $SUITE (minbase) from $MIRROR"
debootstrap --variant=minbase \
  --include=sysvinit-core,ifupdown,isc-dhcp-client,linux-image-amd64,initramfs-tools,openssh-server,sudo,iproute2,iputils-ping,procps,kmod \
  "$SUITE" "$WORK/root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
    tail -n 30 "$WORK/debootstrap.log" >&2; exit 1; }
R="$WORK/root"

say "configuring the guest"
ROOT_UUID="6f1c1a8e-0b55-4c5e-9d1e-3a2f7c0b1e01"
echo "homelab-box" > "$R/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 homelab-box\n' > "$R/etc/hosts"
printf 'UUID=%s / ext4 errors=remount-ro 0 0\n' "$ROOT_UUID" > "$R/etc/fstab"
# No machine-wide identity may be baked in: every VM must get its own DHCP lease. dhclient
# identifies by MAC; an empty machine-id is filled on first boot by whoever needs it.
: > "$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id" "$R"/var/lib/dhcp/*.leases
cat > "$R/etc/network/interfaces" <<'NET'
# The management interface (Vagrant adds its own entries below for the others).
auto lo
iface lo inet loopback

auto eth0
iface eth0 inet dhcp

source /etc/network/interfaces.d/*
NET
# Vagrant restarts every interface with ifdown/ifup when it sets the hostname, before it has
# configured the private ones: they must be known (Vagrant's own stanzas come on top).
mkdir -p "$R/etc/network/interfaces.d"
for i in 1 2 3; do printf 'iface eth%s inet manual\n' "$i"; done > "$R/etc/network/interfaces.d/homelab"
printf 'virtio_net\n' >> "$R/etc/modules"
cat > "$R/etc/initramfs-tools/conf.d/homelab" <<'INI'
MODULES=list
COMPRESS=gzip
INI
printf 'virtio_pci\nvirtio_blk\nvirtio_net\next4\n' >> "$R/etc/initramfs-tools/modules"
# sshd: no DNS lookups, so logins stay fast without a resolver.
printf 'UseDNS no\n' > "$R/etc/ssh/sshd_config.d/homelab.conf"

mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount --bind /dev "$R/dev"
mount --bind /dev/pts "$R/dev/pts"
chroot "$R" /bin/sh -eu <<'CHROOT'
useradd -m -s /bin/bash vagrant
echo 'vagrant ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/vagrant
chmod 0440 /etc/sudoers.d/vagrant
# Only a serial console; no virtual terminals to start.
sed -i -e '/^[1-6]:/d' /etc/inittab
echo 'T0:2345:respawn:/sbin/getty -L ttyS0 115200 vt100' >> /etc/inittab
# udev's coldplug is the slowest part of an emulated boot, and nothing needs it once the
# initramfs has loaded the virtio drivers; neither is a hardware clock or a backlight.
# Every boot script costs seconds there, so only what a test VM needs is left: kernel file
# systems, /dev/pts, hostname, networking, ssh (the root file system is mounted read-write by
# the kernel, so no checkroot/mountall either).
for s in udev hwclock.sh brightness checkroot.sh checkfs.sh checkroot-bootclean.sh \
         mountall.sh mountall-bootclean.sh mountnfs.sh mountnfs-bootclean.sh kmod procps \
         urandom mount-configfs; do
  update-rc.d -f "$s" remove >/dev/null 2>&1 || true
done
update-initramfs -u -k all >/dev/null 2>&1
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log
CHROOT
install -d -m 0700 -o 1000 -g 1000 "$R/home/vagrant/.ssh"
install -m 0600 -o 1000 -g 1000 "$INSECURE_KEY" "$R/home/vagrant/.ssh/authorized_keys"
umount "$R/dev/pts" "$R/dev" "$R/sys" "$R/proc"

KERNEL="$(find "$R/boot" -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sort -V | tail -n1)"
INITRD="initrd.img-${KERNEL#vmlinuz-}"
mkdir -p "$R/boot/extlinux"
cat > "$R/boot/extlinux/extlinux.conf" <<EXT
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  LINUX /boot/$KERNEL
  INITRD /boot/$INITRD
  APPEND root=UUID=$ROOT_UUID rw console=ttyS0 net.ifnames=0 biosdevname=0 quiet mitigations=off panic=10
EXT

say "making the disk (raw, one partition, extlinux)"
DISK="$WORK/disk.raw"
truncate -s 2G "$DISK"
echo 'start=2048, type=83, bootable' | sfdisk -q "$DISK"
LOOP="$(losetup -f --show -o $((2048 * 512)) "$DISK")"
mkfs.ext4 -q -F -L root -U "$ROOT_UUID" -O ^64bit,^metadata_csum,^orphan_file "$LOOP" 2>/dev/null \
  || mkfs.ext4 -q -F -L root -U "$ROOT_UUID" -O ^64bit,^metadata_csum "$LOOP"
mkdir -p "$MNT"
mount "$LOOP" "$MNT"
# --xattrs keeps file capabilities (ping's cap_net_raw) across the copy.
tar -C "$R" --xattrs --xattrs-include='*' -cf - . | tar -C "$MNT" --xattrs --xattrs-include='*' -xpf -
extlinux --install "$MNT/boot/extlinux" >/dev/null 2>&1
umount "$MNT"
losetup -d "$LOOP"; LOOP=""
dd if=/usr/lib/EXTLINUX/mbr.bin of="$DISK" bs=440 count=1 conv=notrunc status=none

say "converting to qcow2 and packing the box"
PACK="$WORK/pack"
mkdir -p "$PACK"
qemu-img convert -O qcow2 -c "$DISK" "$PACK/box.img"
printf '{"provider":"libvirt","format":"qcow2","virtual_size":2}\n' > "$PACK/metadata.json"
cat > "$PACK/Vagrantfile" <<'VF'
# Defaults of the homelab test box (built by scripts/vm/build-box.sh).
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.driver = "qemu"
  end
end
VF
mkdir -p "$CACHE"
tar -C "$PACK" -cf "$BOX.tmp" metadata.json Vagrantfile box.img
mv "$BOX.tmp" "$BOX"
touch "$CACHE/ready"
# Builds of older versions of this script are of no use any more.
find "$CACHE_BASE" -mindepth 1 -maxdepth 1 -type d ! -name "$(basename "$CACHE")" ! -name '.work.*' -exec rm -rf {} +
say "built $BOX ($(du -h "$BOX" | cut -f1)) in $(( $(date +%s) - start ))s"
echo "$BOX"
