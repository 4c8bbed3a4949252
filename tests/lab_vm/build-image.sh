#!/usr/bin/env bash
# Build the lab KVM host image: Debian 12 from Debian packages (debootstrap), SELinux policy
# installed and labelled offline, every package the tests need baked in.
# Usage: build-image.sh OUTDIR
# OUTDIR receives base.qcow2, vmlinuz, initrd.img, esp.img (the EFI system partition a VM boots
# from with kvmlab.py boot --firmware uefi), id_ed25519(.pub), packages.lock (every package's
# installed version). Called by kvmlab.py,
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
# shellcheck disable=SC2016 # dpkg-query's format, not the shell's
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

kernel=$(find "$root/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n 1)
initrd=$(find "$root/boot" -maxdepth 1 -name 'initrd.img-*' | sort -V | tail -n 1)
if [ -z "$kernel" ] || [ -z "$initrd" ]; then echo "lab: no kernel/initrd in the image" >&2; exit 1; fi

echo "lab: GRUB's first configuration and the EFI system partition" >&2
# The root filesystem gets this UUID (mkfs.ext4 -U below), so GRUB's configuration can name it now.
uuid=$(cat /proc/sys/kernel/random/uuid)
# grub-mkconfig cannot run here (grub-probe finds no device under a chroot's /), so the first
# /boot/grub/grub.cfg is the entry update-grub makes, from the same settings
# (rootfs/etc/default/grub and the drop-ins, read as grub-mkconfig reads them); update-grub in
# the VM replaces it. GRUB's linux command puts BOOT_IMAGE= in front, as for update-grub's entries.
# shellcheck disable=SC2016 # expanded by the image's shell, from the image's files
cmdline=$(chroot "$root" sh -c '. /etc/default/grub; for f in /etc/default/grub.d/*.cfg; do
  [ -e "$f" ] && . "$f"; done; echo "$GRUB_CMDLINE_LINUX $GRUB_CMDLINE_LINUX_DEFAULT"')
install -d -m 0755 "$root/boot/grub"
cat >"$root/boot/grub/grub.cfg" <<EOF
# Written by tests/lab_vm/build-image.sh, which cannot run grub-mkconfig: the entry update-grub
# makes from /etc/default/grub. Run update-grub to replace this file.
set default=0
set timeout=0
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
menuentry 'Debian GNU/Linux' {
	search --no-floppy --fs-uuid --set=root $uuid
	echo 'Loading Linux ${kernel##*/vmlinuz-} ...'
	linux /boot/${kernel##*/} root=UUID=$uuid ro ${cmdline% }
	echo 'Loading initial ramdisk ...'
	initrd /boot/${initrd##*/}
}
EOF
# The ESP, a FAT filesystem on a disk of its own (the root disk stays an unpartitioned ext4),
# laid out as on a Debian host without boot entries: Debian's signed shim at the removable-media
# path the firmware boots, Debian's signed GRUB beside it, and GRUB's prefix /EFI/debian holding
# the grub.cfg that finds the root filesystem. The VM's own kernel arguments (its LSM, the IOMMU)
# come from the one SMBIOS OEM string (type 11) kvmlab gives QEMU: the byte at offset 4 of that
# structure is its string count, 1, so --get-string 4 reads string 1.
cat >"$root/tmp/esp-grub.cfg" <<EOF
# kvmlab's ESP (tests/lab_vm/build-image.sh): the lab VM's kernel arguments, then the root disk's
# GRUB configuration, which appends \$kvmlab_args to every kernel command line.
smbios --type 11 --get-string 4 --set kvmlab_args
export kvmlab_args
search --no-floppy --fs-uuid --set=root $uuid
set prefix=(\$root)/boot/grub
configfile \$prefix/grub.cfg
EOF
chroot "$root" env MTOOLS_SKIP_CHECK=1 sh -ec '
  truncate -s 32M /tmp/esp.img
  mkfs.vfat -n KVMLAB-ESP /tmp/esp.img >/dev/null
  mmd -i /tmp/esp.img ::/EFI ::/EFI/BOOT ::/EFI/debian
  mcopy -i /tmp/esp.img /usr/lib/shim/shimx64.efi.signed ::/EFI/BOOT/BOOTX64.EFI
  mcopy -i /tmp/esp.img /usr/lib/shim/mmx64.efi.signed ::/EFI/BOOT/mmx64.efi
  mcopy -i /tmp/esp.img /usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed ::/EFI/BOOT/grubx64.efi
  mcopy -i /tmp/esp.img /tmp/esp-grub.cfg ::/EFI/debian/grub.cfg'
mv "$root/tmp/esp.img" "$work/esp.img"
rm -f "$root/tmp/esp-grub.cfg"

ssh-keygen -q -t ed25519 -N '' -C kvmlab -f "$work/id_ed25519"
install -d -m 0700 "$root/root/.ssh"
install -m 0600 "$work/id_ed25519.pub" "$root/root/.ssh/authorized_keys"

echo "lab: labelling offline with the image's own file_contexts" >&2
setfiles -r "$root" "$root/etc/selinux/default/contexts/files/file_contexts" "$root"

echo "lab: making the disk" >&2
truncate -s 8G "$work/disk.raw"
mkfs.ext4 -q -F -L kvmlab -U "$uuid" -d "$root" "$work/disk.raw"
qemu-img convert -O qcow2 "$work/disk.raw" "$work/base.qcow2"

mkdir -p "$out"
cp "$kernel" "$out/vmlinuz"
cp "$initrd" "$out/initrd.img"
mv "$work/id_ed25519" "$work/id_ed25519.pub" "$work/base.qcow2" "$work/esp.img" "$work/packages.lock" "$out/"
echo "lab: image ready in $out" >&2
