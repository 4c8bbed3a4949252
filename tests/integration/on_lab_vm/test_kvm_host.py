"""The README's main command, from a fresh copy of the tree, and kvm_host_info on the VM it leaves.

``scripts/harden-lab`` runs as a new user runs it: in a copy of what git ships (no
.cache/collections link, no reports), sharing only the pinned virtualenv and the cached lab
image. It boots a SELinux-enforcing lab VM, hardens it, audits it (exiting non-zero when a
control fails) and leaves it running; the tests then read the reports and the VM's facts, and
the VM is stopped at the end of the file.
"""

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import kvmlab

ROOT = Path(__file__).resolve().parents[3]
VM = "kvmlab-main"


def shipped_tree(target):
    """What a fresh clone holds: the files git tracks (and new ones it does not ignore)."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listing):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    (target / ".venv").symlink_to(ROOT / ".venv")


@pytest.fixture(scope="module")
def main_command():
    tree = Path(tempfile.mkdtemp(prefix="kvmsec-fresh-"))
    shipped_tree(tree)
    env = dict(os.environ)
    for name in ("ANSIBLE_COLLECTIONS_PATH", "ANSIBLE_CONFIG"):
        env.pop(name, None)
    try:
        proc = subprocess.run([str(tree / "scripts" / "harden-lab")], cwd=tree, env=env,
                              capture_output=True, text=True, check=False, timeout=3000)
        yield tree, proc
    finally:
        kvmlab.stop(VM)
        shutil.rmtree(tree, ignore_errors=True)


@pytest.fixture(scope="module")
def vm(main_command, lab_vm_of):
    tree, proc = main_command
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    return lab_vm_of(json.loads((tree / ".cache" / "harden-lab" / "vm.json").read_text()))


def test_main_command_hardens_and_the_audit_passes(main_command, vm):
    tree, proc = main_command
    assert "The hardened lab VM %s is running." % VM in proc.stdout
    results = tree / ".cache" / "harden-lab"
    audit = json.loads((results / "audit" / (VM + ".json")).read_text())
    statuses = dict((c["id"], c["status"]) for c in audit["controls"])
    assert audit["mode"] == "audit" and audit["gate_failing"] == []
    assert set(statuses.values()) <= {"pass", "not applicable"}, statuses
    assert statuses["KVM-HOST-02"] == statuses["KVM-SELINUX-01"] == statuses["SVIRT-01"] == "pass"
    hardened = json.loads((results / "harden" / (VM + ".json")).read_text())
    assert hardened["mode"] == "harden"
    assert {c["id"] for c in hardened["controls"] if c["status"] == "fixed"} >= {"SVIRT-01", "KVM-SELINUX-04"}
    fleet = json.loads((results / "audit" / "report.json").read_text())
    moved = dict((c["id"], (c["before"], c["after"])) for c in fleet["changes"]["hosts"][0]["changes"])
    assert moved["SVIRT-01"] == ("fixed", "pass")
    for name in ("report.html", "junit.xml"):
        assert (results / "audit" / name).stat().st_size > 0


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
