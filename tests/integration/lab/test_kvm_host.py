"""kvm_host_info and the audit on the real SELinux-enforcing lab host, against what the VM says."""

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def vm(lab_vm):
    return lab_vm("host-info")


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


def test_audit_writes_report_from_the_catalogue(vm, tmp_path):
    proc = vm.playbook(ROOT / "playbooks" / "audit-kvm.yml",
                       extra_vars={"kvmsec_report_dir": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / (vm.name + ".json")).read_text())
    catalogue = yaml.safe_load((ROOT / "playbooks" / "vars" / "controls.yml").read_text())
    assert [c["id"] for c in report["controls"]] == [c["id"] for c in catalogue["kvmsec_controls"]]
    status = dict((c["id"], c["status"]) for c in report["controls"])
    assert status["KVM-HOST-01"] == "pass"
    assert status["KVM-HOST-02"] == "pass"
    assert report["evidence"]["selinux"] == "enforcing"
    markdown = (tmp_path / (vm.name + ".md")).read_text()
    assert "| KVM-HOST-02 " in markdown and "**pass**" in markdown


def test_audit_fails_the_control_when_selinux_is_permissive(vm, tmp_path):
    vm.ssh("setenforce 0")
    try:
        proc = vm.playbook(ROOT / "playbooks" / "audit-kvm.yml",
                           extra_vars={"kvmsec_report_dir": str(tmp_path)})
    finally:
        vm.ssh("setenforce 1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / (vm.name + ".json")).read_text())
    status = dict((c["id"], c["status"]) for c in report["controls"])
    assert status["KVM-HOST-02"] == "fail"
    assert report["evidence"]["selinux"] == "permissive"
