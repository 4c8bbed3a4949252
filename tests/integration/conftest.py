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

import pytest

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
