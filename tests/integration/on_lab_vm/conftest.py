"""Lab tier helpers: tests that need SELinux, AppArmor, systemd or an IOMMU run in a lab VM.

``lab_vm(name, lsm="selinux", iommu=True)`` boots a VM from a pristine overlay of the cached lab
image (tests/lab_vm/kvmlab.py; docs/lab.md) and returns a ``LabVM``: run shell commands in it, copy
files in, run a module or a playbook of this collection against it through Ansible for real,
reboot it. VMs are stopped when the test module that booted them finishes; ``selinux_vm`` is
one VM that several files share.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests" / "lab_vm"))

import kvmlab  # noqa: E402  pylint: disable=wrong-import-position


class LabVM:
    def __init__(self, info):
        self.info = info
        self.name = info["name"]
        self.inventory = self._write_inventory()

    def _write_inventory(self):
        directory = Path(kvmlab.run_dir(self.name))
        inventory = directory / "inventory"
        inventory.mkdir(exist_ok=True)
        group_vars = inventory / "group_vars"
        if not group_vars.exists():
            group_vars.symlink_to(ROOT / "tests" / "lab_vm" / "inventory" / "group_vars")
        hosts = {"kvm_hosts": {"hosts": {self.name: {
            "ansible_host": self.info["host"], "ansible_port": self.info["port"],
            "ansible_user": "root", "ansible_ssh_private_key_file": self.info["key"],
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        }}}}
        (inventory / "hosts.json").write_text(json.dumps(hosts))
        return str(inventory)

    def ssh(self, command, check=True, data=None):
        """Run a shell command as root in the VM; returns the CompletedProcess (text)."""
        proc = subprocess.run(kvmlab.ssh_argv(self.info, command), input=data,
                              capture_output=True, text=True, check=False, timeout=900)
        if check and proc.returncode != 0:
            raise AssertionError("in %s: %s -> exit %d\n%s%s" % (
                self.name, command, proc.returncode, proc.stdout, proc.stderr))
        return proc

    def put(self, text, path, mode="0644"):
        self.ssh("install -D -m %s /dev/stdin %s" % (mode, path), data=text)

    def module(self, name, args, check=False, diff=False, verbosity=0):
        """Run kvmsec.hardening.NAME in the VM through Ansible; returns (result, full output)."""
        with tempfile.TemporaryDirectory() as tmp:
            result_file = Path(tmp) / "result.json"
            play = [{"hosts": self.name, "gather_facts": False, "tasks": [
                {"name": "module under test", "kvmsec.hardening." + name: args,
                 "register": "under_test", "ignore_errors": True},
                {"name": "keep the result", "delegate_to": "localhost", "check_mode": False,
                 "ansible.builtin.copy": {"content": "{{ under_test | to_json }}",
                                          "dest": str(result_file), "mode": "0600"}},
            ]}]
            playbook = Path(tmp) / "module.yml"
            playbook.write_text(json.dumps(play))
            proc = self.playbook(playbook, check=check, diff=diff, verbosity=verbosity)
            try:
                result = json.loads(result_file.read_text())
            except (OSError, ValueError):
                raise AssertionError("ansible gave no result:\n%s\n%s" % (proc.stdout, proc.stderr))
        return result, proc.stdout + proc.stderr

    def playbook(self, path, extra_vars=None, check=False, diff=False, verbosity=0):
        """Run a playbook against the VM; returns the CompletedProcess (text)."""
        argv = ["ansible-playbook", "-i", self.inventory, str(path)]
        if extra_vars:
            handle, vars_file = tempfile.mkstemp(suffix=".json")
            with os.fdopen(handle, "w") as out:
                json.dump(extra_vars, out)
            argv += ["-e", "@" + vars_file]
        if check:
            argv.append("--check")
        if diff:
            argv.append("--diff")
        if verbosity:
            argv.append("-" + "v" * verbosity)
        # pipelining, as Molecule and examples/ansible.cfg use it: every remote task costs a
        # round trip fewer, which the emulated lab host makes expensive
        env = dict(os.environ, ANSIBLE_PIPELINING="true")
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=3600, env=env)

    def reboot(self):
        self.info = kvmlab.reboot(self.name)


def boot_lab_vm(name, lsm="selinux", iommu=True):
    try:
        return LabVM(kvmlab.boot(name, lsm, iommu))
    except kvmlab.LabError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def lab_vm():
    booted = []

    def boot(name, lsm="selinux", iommu=True):
        vm = boot_lab_vm(name, lsm, iommu)
        booted.append(name)
        return vm

    yield boot
    for name in booted:
        kvmlab.stop(name)


@pytest.fixture(scope="session")
def selinux_vm():
    """One SELinux-enforcing VM without an IOMMU, shared by the lab files that run in this order:
    test_selinux_lab (policy modules), test_svirt_lab (labels, isolation) and
    the IOMMU-off refusal of test_vfio_bind, which stops it (one lab VM at a time). A boot costs
    about a minute of the CI budget; each file leaves the host enforcing, with its policy modules
    and guests, and none needs a pristine one. Run alone, a file boots it itself.
    """
    vm = boot_lab_vm("lab-selinux", iommu=False)
    yield vm
    kvmlab.stop(vm.name)


@pytest.fixture(scope="module")
def lab_vm_of():
    """A LabVM for a VM something else booted (its kvmlab boot info); stopping it is theirs."""
    return LabVM
