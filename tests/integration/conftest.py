"""Integration tier: real qemu-img, real cgroups and a real libvirtd on the development machine.

The development machine has no systemd as PID 1, so libvirtd is started by hand (as the lab
notes describe) the first time a test asks for it, and left running for the rest of the run.
Guests use TCG (``type='qemu'``): /dev/kvm exists here but cannot run a stock guest kernel.
"""

import grp
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

URI = "qemu:///system"


def _libvirt_answers():
    return subprocess.run(["virsh", "-c", URI, "version"], capture_output=True, check=False).returncode == 0


def _give_kvm_device_to_kvm_group():
    """Do what udev does on a normal host: /dev/kvm is root:kvm 0660.

    With no udev here it stays root-only, libvirt's QEMU (running as libvirt-qemu) finds KVM
    gone since its capability probe, and re-probes QEMU at every guest start (~40 s each).
    """
    if os.path.exists("/dev/kvm"):
        os.chown("/dev/kvm", 0, grp.getgrnam("kvm").gr_gid)
        os.chmod("/dev/kvm", 0o660)


@pytest.fixture(scope="session")
def libvirtd():
    """A running system libvirtd; yields its URI. Fails if libvirt is not installed."""
    if shutil.which("libvirtd") is None:
        pytest.fail("libvirtd is not installed: run scripts/bootstrap")
    _give_kvm_device_to_kvm_group()
    if not _libvirt_answers():
        subprocess.run(["virtlogd", "-d"], check=False)
        subprocess.run(["libvirtd", "-d"], check=True)
        deadline = time.monotonic() + 30
        while not _libvirt_answers():
            if time.monotonic() > deadline:
                pytest.fail("libvirtd did not answer on %s within 30 s" % URI)
            time.sleep(0.5)
    return URI


@pytest.fixture(scope="session")
def hardening_playbook():
    """Writes a playbook that ends like harden-kvm.yml: a play with harden-kvm.yml's own play
    keywords (check mode, diffs and failures recorded instead of fatal in an audit) around the
    given tasks or roles on kvm_hosts, then the collection's report play."""
    root = Path(__file__).resolve().parents[2]
    harden = yaml.safe_load((root / "playbooks" / "harden-kvm.yml").read_text())[0]
    keywords = dict((key, harden[key]) for key in ("check_mode", "diff", "ignore_errors"))

    def write(path, **body):
        play = dict({"name": "Controls under test", "hosts": "kvm_hosts", "gather_facts": False}, **keywords)
        play.update(body)
        path.write_text(yaml.safe_dump([play, {"name": "Report", "ansible.builtin.import_playbook":
                                               str(root / "playbooks" / "report.yml")}], sort_keys=False))
        return path
    return write
