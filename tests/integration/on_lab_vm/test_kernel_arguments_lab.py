"""KVM-KERNEL-04 and KVM-CPU-01 proven by booting: a lab host that boots through its firmware,
with Secure Boot, and GRUB (kvmlab --firmware uefi-secureboot), whose operator left
mitigations=off and nosmap in /etc/default/grub, is audited, hardened without and then with
reboot consent, and audited again. KVM-BOOT-01 is judged on a real Secure Boot chain.
The kernel and iommu_vfio roles write one drop-in and GRUB is regenerated once; the arguments
take effect only through the reboot the role makes. One VM, booted once and rebooted twice
(once by the test to give the host its bad command line, once by the role)."""

import json
from pathlib import Path

import pytest
from ansible_jobs import changed_tasks  # tests/integration, on sys.path by its conftest

ROOT = Path(__file__).resolve().parents[3]
CONTROLS = "KVM-KERNEL-04,KVM-CPU-01,KVM-CPU-02,IOMMU-VFIO-01,KVM-BOOT-01"
BAD = "mitigations=off nosmap"


@pytest.fixture(scope="module")
def vm(lab_vm):
    host = lab_vm("kvmlab-boot", firmware="uefi-secureboot")
    # the operator's own line, as a hand-edited host has it; GRUB_CMDLINE_LINUX_DEFAULT comes
    # after the collection's drop-in on the kernel's command line
    host.ssh("sed -i 's/^GRUB_CMDLINE_LINUX_DEFAULT=\"/&%s /' /etc/default/grub && update-grub" % BAD)
    host.reboot()
    return host


def run(vm, tmp_path, name, playbook, **extra):
    report = tmp_path / name
    proc = vm.playbook(ROOT / "playbooks" / playbook, extra_vars=dict(
        extra, kvmsec_report_dir=str(report), kvmsec_fail_severity="none",
        iommu_vfio_harden_without_devices=True), tags=CONTROLS)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-3000:]
    results = json.loads((report / ("%s.json" % vm.name)).read_text())
    return proc, dict((c["id"], c) for c in results["controls"]), (report / "report.html").read_text()


def test_booted_with_the_operators_arguments(vm):
    cmdline = vm.ssh("cat /proc/cmdline").stdout.split()
    assert cmdline[0].startswith("BOOT_IMAGE=") and "mitigations=off" in cmdline and "nosmap" in cmdline


def test_audit_fails_naming_the_arguments_and_the_reboot(vm, tmp_path):
    proc, controls, html = run(vm, tmp_path, "audit", "audit-kvm.yml")
    cpu = controls["KVM-CPU-01"]
    assert cpu["status"] == "fail"
    assert "turns protections off: mitigations=off nosmap" in json.dumps(cpu["evidence"])
    args = controls["KVM-KERNEL-04"]
    assert args["status"] == "fail" and args["reboot_required"] is True
    evidence = json.dumps(args["evidence"])
    assert "-GRUB_CMDLINE_LINUX_DEFAULT=\\\"%s" % BAD in evidence  # the diff of /etc/default/grub
    assert "reboot_required" in evidence
    assert "REBOOT REQUIRED" in html
    assert vm.ssh("cat /etc/default/grub.d/99-zz-kvmsec-hardening.cfg", check=False).returncode != 0
    # the firmware's Secure Boot and the kernel's lockdown under it, read on a real UEFI host
    assert controls["KVM-BOOT-01"]["status"] == "pass", controls["KVM-BOOT-01"]


def test_without_consent_one_drop_in_one_regeneration_and_the_control_keeps_failing(vm, tmp_path):
    proc, controls, dummy = run(vm, tmp_path, "harden", "harden-kvm.yml")
    changed = changed_tasks(proc.stdout)
    regenerations = [t for t in changed if "Regenerate the boot loader configuration" in t]
    assert regenerations == ["kvmsec.hardening.kernel : Regenerate the boot loader configuration for the kernel "
                             "role's arguments"], changed
    assert not any(t.endswith("Reboot for the kernel arguments") for t in changed)
    dropin = vm.ssh("cat /etc/default/grub.d/99-zz-kvmsec-hardening.cfg").stdout
    assert dropin.endswith(
        '# owner: kernel\nGRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX mitigations=auto,nosmt slab_nomerge '
        'page_alloc.shuffle=1 vsyscall=none"\n'
        '# owner: iommu_vfio\nGRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX intel_iommu=on iommu.passthrough=0 '
        'iommu.strict=1"\n'), dropin
    assert "mitigations=off" not in vm.ssh("cat /etc/default/grub").stdout
    linux = vm.ssh("grep -m1 '^\\s*linux' /boot/grub/grub.cfg").stdout
    assert "mitigations=auto,nosmt" in linux and "iommu.strict=1" in linux and "nosmap" not in linux
    assert "mitigations=off" in vm.ssh("cat /proc/cmdline").stdout
    for control in ("KVM-KERNEL-04", "KVM-CPU-01"):
        assert controls[control]["status"] == "fail", controls[control]
    assert controls["KVM-KERNEL-04"]["reboot_required"] is True
    again, controls, dummy = run(vm, tmp_path, "audit-again", "audit-kvm.yml")
    assert controls["KVM-KERNEL-04"]["status"] == "fail" and controls["KVM-KERNEL-04"]["reboot_required"]


def test_with_consent_the_role_reboots_once_and_every_control_passes(vm, tmp_path):
    proc, controls, dummy = run(vm, tmp_path, "harden-reboot", "harden-kvm.yml", kernel_allow_reboot=True)
    changed = changed_tasks(proc.stdout)
    assert changed.count("kvmsec.hardening.kernel : Reboot for the kernel arguments") == 1, changed
    cmdline = vm.ssh("cat /proc/cmdline").stdout.split()
    assert "mitigations=off" not in cmdline and "nosmap" not in cmdline
    assert {"mitigations=auto,nosmt", "iommu.strict=1", "slab_nomerge"} <= set(cmdline)
    assert controls["KVM-KERNEL-04"]["status"] == "fixed" and controls["KVM-KERNEL-04"]["reboot_required"] is False
    assert controls["KVM-CPU-01"]["status"] == "pass"
    dummy, controls, html = run(vm, tmp_path, "audit-after", "audit-kvm.yml")
    for control in ("KVM-KERNEL-04", "KVM-CPU-01", "KVM-CPU-02", "IOMMU-VFIO-01", "KVM-BOOT-01"):
        assert controls[control]["status"] == "pass", controls[control]
    assert "REBOOT REQUIRED" not in html
