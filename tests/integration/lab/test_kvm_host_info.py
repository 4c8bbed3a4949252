"""kvm_host_info on the real SELinux-enforcing lab host, compared with what the VM itself says."""

import pytest


@pytest.fixture(scope="module")
def vm(lab_vm):
    return lab_vm("it-host-info")


def test_facts_match_the_host(vm):
    result, dummy = vm.module("kvm_host_info", {"require_kvm_host": True})
    assert result["changed"] is False and not result.get("failed"), result
    host = result["host"]
    assert host["selinux"] == vm.ssh("getenforce").stdout.strip().lower() == "enforcing"
    assert "selinux" in host["lsms"]
    assert host["cgroup_version"] == 2
    assert host["iommu_groups"] == int(vm.ssh("ls /sys/kernel/iommu_groups | wc -l").stdout)
    assert host["iommu_groups"] > 0
    assert "intel_iommu=on" in host["kernel_cmdline"]
    assert host["qemu_binary"] == "/usr/bin/qemu-system-x86_64"
    assert host["libvirtd_binary"] == "/usr/sbin/libvirtd"
    assert {"smep", "smap"} <= set(host["cpu"]["security_flags"])


def test_check_mode_reads_the_same(vm):
    normal, dummy = vm.module("kvm_host_info", {})
    checked, dummy = vm.module("kvm_host_info", {}, check=True)
    assert checked["host"]["selinux"] == normal["host"]["selinux"]
    assert checked["changed"] is False
