# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a virtualization host is made of, read from /proc and /sys. Private to the collection.

Every reader takes the filesystem root as a parameter so tests can point it at a fake tree
built from real captures; nothing here runs a command or imports Ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import gzip
import os
import re

from ansible_collections.kvmsec.hardening.plugins.module_utils._kernel_arguments import split

HW_VIRT_FLAGS = {"vmx": "intel", "svm": "amd"}
SECURITY_FLAGS = ("smep", "smap", "umip", "pku", "md_clear", "ssbd", "ibrs", "ibpb", "stibp")
QEMU_BINARIES = ("usr/bin/qemu-system-x86_64", "usr/libexec/qemu-kvm", "usr/bin/qemu-kvm")
LIBVIRTD_BINARIES = ("usr/sbin/libvirtd", "usr/sbin/virtqemud")
# the kernel configuration options the kernel controls look at (docs/kernel.md); the rest of the
# file (thousands of lines) says nothing about the host's hardening
KERNEL_CONFIG_OPTIONS = (
    "CONFIG_KVM", "CONFIG_KVM_INTEL", "CONFIG_KVM_AMD", "CONFIG_VFIO", "CONFIG_VFIO_PCI",
    "CONFIG_SECURITY", "CONFIG_SECURITY_SELINUX", "CONFIG_SECURITY_APPARMOR",
    "CONFIG_SECURITY_YAMA", "CONFIG_SECURITY_LOCKDOWN_LSM", "CONFIG_STRICT_KERNEL_RWX",
    "CONFIG_STRICT_MODULE_RWX", "CONFIG_RANDOMIZE_BASE", "CONFIG_VMAP_STACK",
    "CONFIG_HARDENED_USERCOPY", "CONFIG_PAGE_TABLE_ISOLATION", "CONFIG_MITIGATION_PAGE_TABLE_ISOLATION",
    "CONFIG_RETPOLINE", "CONFIG_MITIGATION_RETPOLINE", "CONFIG_MODULE_SIG", "CONFIG_SECCOMP",
    "CONFIG_BPF_JIT_ALWAYS_ON", "CONFIG_DEVMEM", "CONFIG_STRICT_DEVMEM", "CONFIG_IO_STRICT_DEVMEM",
    "CONFIG_INTEL_IOMMU", "CONFIG_AMD_IOMMU", "CONFIG_IOMMU_DEFAULT_DMA_STRICT",
)
KERNEL_CONFIG_LINE = re.compile(r"^(CONFIG_[A-Z0-9_]+)=(.*)$|^# (CONFIG_[A-Z0-9_]+) is not set$")
EFI_SECURE_BOOT = "sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
NESTED_MODULES = ("kvm_intel", "kvm_amd")


def _path(root, relative):
    return os.path.join(root, relative)


def _read(root, relative, default=""):
    try:
        with open(_path(root, relative)) as handle:
            return handle.read()
    except (IOError, OSError):
        return default


def cpu_info(root="/"):
    """Vendor, model and the flags that matter for virtualization and its mitigations."""
    vendor = model = ""
    flags = set()
    for line in _read(root, "proc/cpuinfo").splitlines():
        key, dummy, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    virt = sorted(flag for flag in HW_VIRT_FLAGS if flag in flags)
    return {
        "vendor": {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(vendor, vendor.lower()),
        "model": model,
        "hw_virtualization": [HW_VIRT_FLAGS[flag] for flag in virt],
        "security_flags": sorted(flag for flag in SECURITY_FLAGS if flag in flags),
        "flags": sorted(flags),
    }


def kernel_cmdline(root="/"):
    """The running kernel's arguments, word by word as kernel_arguments reads them."""
    return split(_read(root, "proc/cmdline"))


def active_lsms(root="/"):
    """The kernel's active LSM list; empty when securityfs is not mounted."""
    text = _read(root, "sys/kernel/security/lsm").strip()
    return [name for name in text.split(",") if name]


def selinux_mode(root="/"):
    """enforcing, permissive or disabled, from selinuxfs (no library needed)."""
    enforce = _read(root, "sys/fs/selinux/enforce").strip()
    if enforce == "1":
        return "enforcing"
    if enforce == "0":
        return "permissive"
    return "disabled"


def apparmor_enabled(root="/"):
    return _read(root, "sys/module/apparmor/parameters/enabled").strip() == "Y"


def cgroup_version(root="/"):
    """2 when the unified hierarchy is mounted at /sys/fs/cgroup, else 1 (hybrid counts as 1)."""
    for line in _read(root, "proc/self/mounts").splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[1] == "/sys/fs/cgroup":
            return 2 if fields[2] == "cgroup2" else 1
    return 1


def iommu_groups(root="/"):
    """Number of IOMMU groups: zero means the IOMMU is off or absent."""
    try:
        return len(os.listdir(_path(root, "sys/kernel/iommu_groups")))
    except OSError:
        return 0


def vulnerabilities(root="/"):
    directory = _path(root, "sys/devices/system/cpu/vulnerabilities")
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return {}
    relative = "sys/devices/system/cpu/vulnerabilities/"
    return dict((name, _read(root, relative + name).strip()) for name in names)


def parse_kernel_config(text, options=KERNEL_CONFIG_OPTIONS):
    """{option: value} for the options asked for: y, m, a string or number, or n when the
    file says it is not set; options the file does not mention are left out (the kernel
    predates them or the architecture lacks them)."""
    values = {}
    for line in text.splitlines():
        match = KERNEL_CONFIG_LINE.match(line.strip())
        if not match:
            continue
        name = match.group(1) or match.group(3)
        if name in options:
            values[name] = match.group(2).strip('"') if match.group(1) else "n"
    return values


def kernel_release(root="/"):
    return _read(root, "proc/sys/kernel/osrelease").strip()


def kernel_config(root="/", release=None):
    """(path, options) of the running kernel's configuration, or (None, {}) when none is readable."""
    release = kernel_release(root) if release is None else release
    text = _read(root, "boot/config-%s" % release, default=None) if release else None
    if text is not None:
        return "/boot/config-%s" % release, parse_kernel_config(text)
    try:
        with gzip.open(_path(root, "proc/config.gz"), "rt") as handle:
            return "/proc/config.gz", parse_kernel_config(handle.read())
    except (IOError, OSError, EOFError):
        return None, {}


def secure_boot(root="/"):
    """True or False on a UEFI host (the SecureBoot variable's data byte); None without UEFI, or
    when the variables cannot be read (efivarfs not mounted)."""
    variables = _path(root, "sys/firmware/efi/efivars")
    try:
        if not os.listdir(variables):
            return None
    except OSError:
        return None
    try:
        with open(_path(root, EFI_SECURE_BOOT), "rb") as handle:
            data = handle.read()
    except (IOError, OSError):
        # firmware without Secure Boot support has no such variable
        return False
    # efivarfs files start with the variable's 4 attribute bytes
    return len(data) >= 5 and data[4] == 1


def lockdown_mode(root="/"):
    """none, integrity or confidentiality (the bracketed word), None without the lockdown LSM."""
    match = re.search(r"\[(\w+)\]", _read(root, "sys/kernel/security/lockdown"))
    return match.group(1) if match else None


def _yes(text):
    text = text.strip()
    return None if not text else text in ("Y", "1")


def nested_virtualization(root="/"):
    """{module: True/False} of the loaded KVM modules' nested parameter."""
    found = {}
    for module in NESTED_MODULES:
        value = _yes(_read(root, "sys/module/%s/parameters/nested" % module))
        if value is not None:
            found[module] = value
    return found


def first_existing(root, candidates):
    for candidate in candidates:
        if os.path.exists(_path(root, candidate)):
            return "/" + candidate
    return None


def gather(root="/"):
    cpu = cpu_info(root)
    lsms = active_lsms(root)
    cmdline = kernel_cmdline(root)
    release = kernel_release(root)
    config_path, config = kernel_config(root, release)
    return {
        "cpu": cpu,
        "kvm_device": os.path.exists(_path(root, "dev/kvm")),
        "kernel_cmdline": cmdline,
        "lsms": lsms,
        "selinux": selinux_mode(root),
        "apparmor": apparmor_enabled(root) and "apparmor" in lsms,
        "cgroup_version": cgroup_version(root),
        "iommu_groups": iommu_groups(root),
        "vulnerabilities": vulnerabilities(root),
        "qemu_binary": first_existing(root, QEMU_BINARIES),
        "libvirtd_binary": first_existing(root, LIBVIRTD_BINARIES),
        "kernel_release": release,
        "kernel_config_path": config_path,
        "kernel_config": config,
        "uefi": os.path.isdir(_path(root, "sys/firmware/efi")),
        "secure_boot": secure_boot(root),
        "lockdown": lockdown_mode(root),
        "module_sig_enforce": _yes(_read(root, "sys/module/module/parameters/sig_enforce")),
        "nested": nested_virtualization(root),
    }


def service_states(names, run, systemctl):
    """{name: {"enabled": bool, "active": bool, "masked": bool}} of systemd units, or nulls
    without systemctl.

    ``systemctl show`` prints one block of properties per unit, in the order given.
    """
    unknown = dict((name, {"enabled": None, "active": None, "masked": None}) for name in names)
    if not names or not systemctl:
        return unknown
    rc, stdout, _stderr = run([systemctl, "show", "--property=UnitFileState,ActiveState", "--"] + list(names))
    blocks = stdout.strip("\n").split("\n\n") if rc == 0 else []
    if len(blocks) != len(names):
        return unknown
    states = {}
    for name, block in zip(names, blocks):
        values = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        states[name] = {"enabled": values.get("UnitFileState") == "enabled",
                        "active": values.get("ActiveState") == "active",
                        "masked": values.get("UnitFileState") == "masked"}
    return states


def missing_packages(names, root="/", run=None, rpm=None):
    """The packages of NAMES that are not installed, in their order.

    dpkg's status file is read directly (no command); on rpm hosts ``rpm -q`` prints the names
    it has. With neither, every package counts as missing, so the caller installs them all.
    """
    status = _read(root, "var/lib/dpkg/status", None)
    if status is not None:
        installed = set()
        for stanza in status.split("\n\n"):
            fields = dict(line.split(": ", 1) for line in stanza.splitlines()
                          if ": " in line and not line.startswith(" "))
            if fields.get("Status", "").endswith(" installed"):
                installed.add(fields.get("Package"))
    elif names and run and rpm:
        dummy, stdout, dummy = run([rpm, "-q", "--queryformat", "%{NAME}\n"] + list(names))
        installed = set(line.strip() for line in stdout.splitlines())
    else:
        installed = set()
    return [name for name in names if name not in installed]


def readiness_problems(facts, allow_emulation):
    """Why this host cannot be treated as a KVM host; empty when it can."""
    problems = []
    if not facts["qemu_binary"]:
        problems.append("no QEMU system emulator (looked for %s)"
                        % ", ".join("/" + b for b in QEMU_BINARIES))
    if not facts["libvirtd_binary"]:
        problems.append("no libvirt daemon (looked for %s)"
                        % ", ".join("/" + b for b in LIBVIRTD_BINARIES))
    hardware = facts["cpu"]["hw_virtualization"] and facts["kvm_device"]
    if not hardware and not allow_emulation:
        if not facts["cpu"]["hw_virtualization"]:
            problems.append("the CPU offers no hardware virtualization (no vmx/svm flag): enable "
                            "VT-x/AMD-V in firmware, or set allow_emulation for a lab host")
        else:
            problems.append("/dev/kvm is missing: load kvm_intel or kvm_amd")
    return problems
