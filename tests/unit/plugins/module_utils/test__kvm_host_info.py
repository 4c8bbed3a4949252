"""The host-facts readers against fake /proc and /sys trees shaped like real captures."""

import gzip
import os
import shutil
import subprocess

import pytest

from ansible_collections.kvmsec.hardening.plugins.module_utils import _kvm_host_info

INTEL_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz
flags\t\t: fpu vme vmx smx est smep smap umip md_clear ssbd ibrs ibpb stibp
"""
TCG_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: QEMU TCG CPU version 2.5+
flags\t\t: fpu vme sse2 smep smap umip pku
"""


def make_tree(tmp_path, files):
    for relative, content in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return str(tmp_path)


@pytest.fixture
def kvm_host(tmp_path):
    return make_tree(tmp_path, {
        "proc/cpuinfo": INTEL_CPUINFO,
        "proc/cmdline": "BOOT_IMAGE=/vmlinuz root=/dev/vda intel_iommu=on iommu=pt\n",
        "proc/self/mounts": "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n",
        "sys/kernel/security/lsm": "lockdown,capability,landlock,yama,selinux,bpf",
        "sys/fs/selinux/enforce": "1",
        "sys/kernel/iommu_groups/0/devices/.keep": "",
        "sys/kernel/iommu_groups/1/devices/.keep": "",
        "sys/devices/system/cpu/vulnerabilities/spectre_v2": "Mitigation: Enhanced IBRS\n",
        "dev/kvm": "",
        "usr/bin/qemu-system-x86_64": "",
        "usr/sbin/libvirtd": "",
    })


def test_gather_reads_a_hardware_kvm_host(kvm_host):
    facts = _kvm_host_info.gather(kvm_host)
    assert facts["cpu"] == {
        "vendor": "intel",
        "model": "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz",
        "hw_virtualization": ["intel"],
        "security_flags": ["ibpb", "ibrs", "md_clear", "smap", "smep", "ssbd", "stibp", "umip"],
        "flags": sorted(INTEL_CPUINFO.split("flags\t\t: ")[1].split()),
    }
    assert facts["selinux"] == "enforcing"
    assert facts["apparmor"] is False
    assert facts["cgroup_version"] == 2
    assert facts["iommu_groups"] == 2
    assert "intel_iommu=on" in facts["kernel_cmdline"]
    assert facts["vulnerabilities"] == {"spectre_v2": "Mitigation: Enhanced IBRS"}
    assert facts["qemu_binary"] == "/usr/bin/qemu-system-x86_64"
    assert facts["libvirtd_binary"] == "/usr/sbin/libvirtd"
    assert _kvm_host_info.readiness_problems(facts, allow_emulation=False) == []


def test_emulated_lab_host_needs_allow_emulation(tmp_path):
    root = make_tree(tmp_path, {
        "proc/cpuinfo": TCG_CPUINFO,
        "proc/self/mounts": "tmpfs /sys/fs/cgroup tmpfs ro 0 0\n",
        "sys/kernel/security/lsm": "capability,apparmor",
        "sys/module/apparmor/parameters/enabled": "Y\n",
        "usr/libexec/qemu-kvm": "",
        "usr/sbin/virtqemud": "",
    })
    facts = _kvm_host_info.gather(root)
    assert facts["cpu"]["hw_virtualization"] == []
    assert facts["apparmor"] is True and facts["selinux"] == "disabled"
    assert facts["cgroup_version"] == 1
    assert facts["iommu_groups"] == 0
    problems = _kvm_host_info.readiness_problems(facts, allow_emulation=False)
    assert len(problems) == 1 and "no vmx/svm flag" in problems[0]
    assert _kvm_host_info.readiness_problems(facts, allow_emulation=True) == []


def test_missing_kvm_device_and_software_is_reported(tmp_path):
    root = make_tree(tmp_path, {"proc/cpuinfo": INTEL_CPUINFO})
    problems = _kvm_host_info.readiness_problems(_kvm_host_info.gather(root), allow_emulation=False)
    assert [p.split(" (")[0] for p in problems] == [
        "no QEMU system emulator", "no libvirt daemon", "/dev/kvm is missing: load kvm_intel or kvm_amd"]


def test_permissive_selinux(tmp_path):
    assert _kvm_host_info.selinux_mode(make_tree(tmp_path, {"sys/fs/selinux/enforce": "0"})) == "permissive"


def test_gather_on_this_machine_is_consistent():
    """The real /proc and /sys of the machine running the tests."""
    facts = _kvm_host_info.gather()
    assert facts["kvm_device"] == os.path.exists("/dev/kvm")
    assert facts["cgroup_version"] in (1, 2)
    assert facts["kernel_cmdline"] == open("/proc/cmdline").read().split()


# captured on the lab host (Debian 12, systemd 252): libvirtd runs, nosuch does not exist, and
# virtlogd is socket-activated
SYSTEMCTL_SHOW = ("ActiveState=active\nUnitFileState=enabled\n\n"
                  "ActiveState=inactive\nUnitFileState=\n\n"
                  "ActiveState=inactive\nUnitFileState=indirect\n\n"
                  "ActiveState=inactive\nUnitFileState=masked\n")


def test_service_states_from_systemctl_show():
    calls = []

    def run(argv):
        calls.append(argv)
        return 0, SYSTEMCTL_SHOW, ""

    states = _kvm_host_info.service_states(["libvirtd", "nosuch", "virtlogd", "libvirtd-tcp.socket"], run,
                                           "/usr/bin/systemctl")
    assert calls == [["/usr/bin/systemctl", "show", "--property=UnitFileState,ActiveState", "--",
                      "libvirtd", "nosuch", "virtlogd", "libvirtd-tcp.socket"]]
    assert states == {"libvirtd": {"enabled": True, "active": True, "masked": False},
                      "nosuch": {"enabled": False, "active": False, "masked": False},
                      "virtlogd": {"enabled": False, "active": False, "masked": False},
                      "libvirtd-tcp.socket": {"enabled": False, "active": False, "masked": True}}


def test_service_states_are_unknown_where_systemd_cannot_say():
    def real(argv):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    unknown = {"libvirtd": {"enabled": None, "active": None, "masked": None}}
    # this development machine has systemctl but no systemd as PID 1: systemctl show fails
    systemctl = shutil.which("systemctl")
    if systemctl and not os.path.isdir("/run/systemd/system"):
        assert _kvm_host_info.service_states(["libvirtd"], real, systemctl) == unknown
    assert _kvm_host_info.service_states(["libvirtd"], real, None) == unknown
    assert _kvm_host_info.service_states([], real, systemctl) == {}


# the shape of Debian 12's /boot/config-6.1.0-*-amd64
DEBIAN_CONFIG = """#
# Automatically generated file; DO NOT EDIT.
CONFIG_KVM=m
CONFIG_KVM_INTEL=m
# CONFIG_KVM_AMD is not set
CONFIG_SECURITY_SELINUX=y
CONFIG_LSM="landlock,lockdown,yama,loadpin,safesetid,integrity,apparmor,selinux,smack,tomoyo,bpf"
CONFIG_STRICT_KERNEL_RWX=y
CONFIG_RETPOLINE=y
CONFIG_UNRELATED=y
"""


def test_kernel_config_keeps_the_options_the_controls_read():
    values = _kvm_host_info.parse_kernel_config(DEBIAN_CONFIG)
    assert values == {"CONFIG_KVM": "m", "CONFIG_KVM_INTEL": "m", "CONFIG_KVM_AMD": "n",
                      "CONFIG_SECURITY_SELINUX": "y", "CONFIG_STRICT_KERNEL_RWX": "y",
                      "CONFIG_RETPOLINE": "y"}
    assert _kvm_host_info.parse_kernel_config('CONFIG_LSM="a,b"\n', options=("CONFIG_LSM",)) == {"CONFIG_LSM": "a,b"}


def test_kernel_config_of_the_running_release_from_boot(tmp_path):
    root = make_tree(tmp_path, {"proc/sys/kernel/osrelease": "6.1.0-28-amd64\n",
                                "boot/config-6.1.0-28-amd64": DEBIAN_CONFIG,
                                "boot/config-6.1.0-27-amd64": "CONFIG_KVM=y\n"})
    path, values = _kvm_host_info.kernel_config(root)
    assert path == "/boot/config-6.1.0-28-amd64" and values["CONFIG_KVM"] == "m"
    facts = _kvm_host_info.gather(root)
    assert facts["kernel_release"] == "6.1.0-28-amd64" and facts["kernel_config"] == values


def test_kernel_config_of_this_machine_from_proc_config_gz():
    if not os.path.exists("/proc/config.gz"):
        pytest.skip("this kernel does not offer /proc/config.gz")
    path, values = _kvm_host_info.kernel_config("/")
    release = os.uname().release
    if path != "/proc/config.gz":
        assert path == "/boot/config-" + release
    with gzip.open("/proc/config.gz", "rt") as handle:
        text = handle.read()
    assert ("CONFIG_SECCOMP=%s" % values["CONFIG_SECCOMP"]) in text.splitlines()


def test_without_a_readable_config_the_controls_see_none(tmp_path):
    root = make_tree(tmp_path, {"proc/sys/kernel/osrelease": "6.1.0-28-amd64\n"})
    assert _kvm_host_info.kernel_config(root) == (None, {})


def efivar(value):
    # efivarfs: 4 bytes of attributes, then the variable's data
    return b"\x06\x00\x00\x00" + bytes([value])


# EFI_GLOBAL_VARIABLE's GUID (UEFI spec), spelled out: the module's own constant once had a wrong
# one, which its tests, written with the constant, could not catch (the lab's Secure Boot did)
SECURE_BOOT = "sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"


@pytest.mark.parametrize("files, expected", [
    ({}, None),                                            # BIOS or a kernel QEMU starts directly
    ({"sys/firmware/efi/.keep": b""}, None),               # UEFI, efivarfs not mounted
    ({"sys/firmware/efi/efivars/Boot0000-8be4df61-93ca-11d2-aa0d-00e098032b8c": b""}, False),  # no such variable
    ({SECURE_BOOT: efivar(0)}, False),
    ({SECURE_BOOT: efivar(1)}, True),
])
def test_secure_boot_from_the_efi_variable(tmp_path, files, expected):
    for relative, data in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    assert _kvm_host_info.secure_boot(str(tmp_path)) is expected


def test_lockdown_signature_enforcement_and_nested_virtualization(tmp_path):
    root = make_tree(tmp_path, {
        "sys/kernel/security/lockdown": "none [integrity] confidentiality\n",
        "sys/module/module/parameters/sig_enforce": "Y\n",
        "sys/module/kvm_intel/parameters/nested": "Y\n",
    })
    facts = _kvm_host_info.gather(root)
    assert facts["lockdown"] == "integrity" and facts["module_sig_enforce"] is True
    assert facts["nested"] == {"kvm_intel": True}
    assert facts["uefi"] is False and facts["secure_boot"] is None
    bare = _kvm_host_info.gather(make_tree(tmp_path / "bare", {}))
    assert bare["lockdown"] is None and bare["module_sig_enforce"] is None and bare["nested"] == {}


# shaped like Debian's /var/lib/dpkg/status: a removed package keeps its configuration files
# (deinstall ok config-files), a multi-arch library has one stanza per architecture, and a
# Description continues on indented lines that may hold ": "
DPKG_STATUS = """Package: libvirt-daemon-system
Status: install ok installed
Architecture: amd64
Description: Libvirt daemon configuration files
 Note: the daemon itself is in libvirt-daemon.

Package: auditd
Status: deinstall ok config-files
Architecture: amd64

Package: libc6
Status: install ok installed
Architecture: i386

Package: libc6
Status: install ok installed
Architecture: amd64
"""


def test_missing_packages_from_dpkg_status(tmp_path):
    root = make_tree(tmp_path, {"var/lib/dpkg/status": DPKG_STATUS})
    names = ["libvirt-daemon-system", "auditd", "libc6", "qemu-utils"]
    assert _kvm_host_info.missing_packages(names, root) == ["auditd", "qemu-utils"]
    assert _kvm_host_info.missing_packages([], root) == []


def test_missing_packages_on_this_machine():
    """This Debian machine's real dpkg database: dpkg is installed, the other name exists nowhere."""
    assert _kvm_host_info.missing_packages(["dpkg", "kvmsec-no-such-package"]) == ["kvmsec-no-such-package"]


def test_missing_packages_through_rpm_and_without_a_package_manager(tmp_path):
    calls = []

    def run(argv):
        calls.append(argv)
        # rpm -q prints the names it has and a sentence for each one it does not
        return 1, "libvirt-daemon\npackage qemu-img is not installed\n", ""

    root = str(tmp_path)
    assert _kvm_host_info.missing_packages(["libvirt-daemon", "qemu-img"], root, run, "/usr/bin/rpm") == ["qemu-img"]
    assert calls == [["/usr/bin/rpm", "-q", "--queryformat", "%{NAME}\n", "libvirt-daemon", "qemu-img"]]
    assert _kvm_host_info.missing_packages(["libvirt-daemon"], root) == ["libvirt-daemon"]
