"""vfio_bind on a lab host without an IOMMU: the refusal names the kernel argument to add.

The shared SELinux VM has no IOMMU (conftest's ``selinux_vm``): no VM of its own for one
refusal. This file runs last of those that use it and stops it (one lab VM at a time).
"""

import kvmlab  # tests/lab_vm, put on sys.path by conftest.py
from test_vfio_bind import EDU, sysfs_state


def test_iommu_off_is_refused_with_the_missing_kernel_argument(selinux_vm):
    vm = selinux_vm
    try:
        assert vm.ssh("ls /sys/kernel/iommu_groups | wc -l").stdout.strip() == "0"
        before = sysfs_state(vm)
        result, output = vm.module("vfio_bind", {"devices": [EDU]})
        assert result.get("failed"), output
        assert "the IOMMU is off (/sys/kernel/iommu_groups is empty)" in result["msg"]
        # kvmlab --no-iommu drops the emulated intel-iommu device with the kernel argument, so
        # the firmware has no DMAR table: the advice starts there. (DMAR present without
        # intel_iommu=on is covered by the unit tests; kvmlab cannot boot that combination.)
        assert "the firmware offers no IOMMU (no ACPI DMAR or IVRS table)" in result["msg"]
        assert "add intel_iommu=on on Intel CPUs" in result["msg"]
        assert "intel_iommu" not in vm.ssh("cat /proc/cmdline").stdout
        assert "DMAR" not in vm.ssh("ls /sys/firmware/acpi/tables").stdout
        assert sysfs_state(vm) == before
    finally:
        kvmlab.stop(vm.name)  # one lab VM at a time
