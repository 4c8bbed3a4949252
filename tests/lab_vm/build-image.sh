#!/usr/bin/env bash
# Build the lab KVM host image: Debian 12 from Debian packages (debootstrap), SELinux policy
# installed and labelled offline, every package the tests need baked in.
# Usage: build-image.sh OUTDIR
# OUTDIR receives base.qcow2, vmlinuz, initrd.img, id_ed25519(.pub), packages.lock (every
# package's installed version). Called by kvmlab.py,
# which caches OUTDIR under a key derived from this script, packages.txt and rootfs/.
set -euo pipefail

out=$1
here=$(cd "$(dirname "$0")" && pwd)
suite=bookworm
mirror=${KVMSEC_LAB_MIRROR:-}
work=$(mktemp -d "${out}.build.XXXXXX")
root=$work/root
cleanup() {
  for m in var/cache/apt/archives dev/pts dev sys proc; do umount -l "$root/$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# debootstrap installs the base system; everything else goes in through apt in the chroot,
# where maintainer scripts run with /proc and /dev mounted and services kept from starting
base=linux-image-amd64,systemd-sysv,udev,dbus,kmod,iproute2,ifupdown,isc-dhcp-client,openssh-server,python3
packages=$(grep -v '^\s*#' "$here/packages.txt" | grep -v '^\s*$')
debs=${KVMSEC_LAB_CACHE:-$HOME/.cache/kvmsec-lab}/debs
mkdir -p "$debs"

fail() {
  echo "lab: $1 failed; last lines of its log:" >&2
  tail -n 40 "$2" >&2
  cp "$2" "${out}.failed.log" && echo "lab: full log kept in ${out}.failed.log" >&2
  exit 1
}

echo "lab: debootstrap $suite" >&2
# shellcheck disable=SC2086 # an empty mirror means debootstrap's own default
debootstrap --variant=minbase --cache-dir="$debs" --include="$base" "$suite" "$root" $mirror \
  >"$work/debootstrap.log" 2>&1 || fail debootstrap "$work/debootstrap.log"

echo "lab: installing $(wc -l <<<"$packages") packages in the image" >&2
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
mount --bind "$debs" "$root/var/cache/apt/archives"
# shellcheck disable=SC2086 # one argument per package
chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
  $packages >"$work/apt.log" 2>&1 || fail "apt-get install in the image" "$work/apt.log"
umount "$root/var/cache/apt/archives"
# what the names resolved to, kept with the image for bug reports (packages.txt pins nothing:
# Debian's archive keeps only the newest revision)
chroot "$root" dpkg-query -W -f='${Package}=${Version}\n' >"$work/packages.lock"
for m in dev/pts dev sys proc; do umount "$root/$m"; done
rm -f "$root/usr/sbin/policy-rc.d"
rm -rf "$root"/var/lib/apt/lists/*

echo "lab: configuring the image" >&2
cp -a "$here/rootfs/." "$root/"
echo kvmlab >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 kvmlab\n' >"$root/etc/hosts"
sed -i 's/^SELINUX=.*/SELINUX=enforcing/' "$root/etc/selinux/config"
# apt timers would take the dpkg lock while Ansible runs on a freshly booted VM
for unit in apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer fstrim.timer \
            libvirt-guests.service; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
# the lab has no dnsmasq: libvirt's NAT network would only log errors at every start
rm -f "$root/etc/libvirt/qemu/networks/autostart/default.xml"

ssh-keygen -q -t ed25519 -N '' -C kvmlab -f "$work/id_ed25519"
install -d -m 0700 "$root/root/.ssh"
install -m 0600 "$work/id_ed25519.pub" "$root/root/.ssh/authorized_keys"

echo "lab: labelling offline with the image's own file_contexts" >&2
setfiles -r "$root" "$root/etc/selinux/default/contexts/files/file_contexts" "$root"

kernel=$(find "$root/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n 1)
initrd=$(find "$root/boot" -maxdepth 1 -name 'initrd.img-*' | sort -V | tail -n 1)
[ -n "$kernel" ] && [ -n "$initrd" ] || { echo "lab: no kernel/initrd in the image" >&2; exit 1; }

echo "lab: making the disk" >&2
truncate -s 8G "$work/disk.raw"
mkfs.ext4 -q -F -L kvmlab -d "$root" "$work/disk.raw"
qemu-img convert -O qcow2 "$work/disk.raw" "$work/base.qcow2"

mkdir -p "$out"
cp "$kernel" "$out/vmlinuz"
cp "$initrd" "$out/initrd.img"
mv "$work/id_ed25519" "$work/id_ed25519.pub" "$work/base.qcow2" "$work/packages.lock" "$out/"
echo "lab: image ready in $out" >&2
