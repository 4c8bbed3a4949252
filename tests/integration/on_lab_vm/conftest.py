"""Lab tier helpers: tests that need SELinux, AppArmor, systemd or an IOMMU run in a lab VM.

``lab_vm(name, lsm="selinux", iommu=True)`` boots a VM from a pristine overlay of the cached lab
image (tests/lab_vm/kvmlab.py; docs/lab.md) and returns a ``LabVM``: run shell commands in it, copy
files in, run a module or a playbook of this collection against it through Ansible for real,
reboot it. VMs are stopped when the test module that booted them finishes; ``selinux_vm`` and
``main_vm`` are VMs that several files share.

One lab VM runs at a time and each is booted once, so the files run in LAB_FILES order: the
README's main command leaves its hardened VM (which has the IOMMU) to test_awx_jobs,
test_audit_forward and test_vfio_bind, and the shared SELinux VM serves the policy, sVirt and IOMMU-off files.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests" / "lab_vm"))

import kvmlab  # noqa: E402  pylint: disable=wrong-import-position

LAB_FILES = ("test_lab.py", "test_kvm_host.py", "test_awx_jobs.py", "test_audit_forward.py", "test_vfio_bind.py",
             "test_selinux_lab.py", "test_svirt_lab.py", "test_vfio_bind_iommu_off.py", "test_kernel_arguments_lab.py")
MAIN_VM = "kvmlab-main"
# limits on what a lab test waits for: a hung VM fails its test within minutes, never CI
SSH_TIMEOUT = 300
PLAYBOOK_TIMEOUT = 900
# under the tier's per-test limit (scripts/test), so that this one says what it was waiting for
MAIN_COMMAND_TIMEOUT = 840


def pytest_collection_modifyitems(items):
    """The lab files in LAB_FILES order (a file it does not name last), each file's tests in
    their own order; the other tiers' tests keep their places."""
    here = Path(__file__).resolve().parent
    places = [index for index, item in enumerate(items) if Path(str(item.fspath)).parent == here]

    def rank(item):
        name = Path(str(item.fspath)).name
        return LAB_FILES.index(name) if name in LAB_FILES else len(LAB_FILES)
    for index, item in zip(places, sorted((items[index] for index in places), key=rank)):
        items[index] = item


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A lab test that failed, or hit its time limit, shows what the lab VMs were doing."""
    report = yield
    if report.failed and Path(str(item.fspath)).parent == Path(__file__).resolve().parent:
        try:
            report.sections.append(("lab VMs", kvmlab.status()))
        except Exception as exc:  # pylint: disable=broad-except  # the report must never fail
            report.sections.append(("lab VMs", "could not read the lab VMs' state: %r" % exc))
    return report


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
            "ansible_ssh_common_args": " ".join(
                ("-o StrictHostKeyChecking=no", "-o UserKnownHostsFile=/dev/null") + kvmlab.SSH_KEEPALIVE),
        }}}}
        (inventory / "hosts.json").write_text(json.dumps(hosts))
        return str(inventory)

    def ssh(self, command, check=True, data=None):
        """Run a shell command as root in the VM; returns the CompletedProcess (text)."""
        proc = subprocess.run(kvmlab.ssh_argv(self.info, command), input=data,
                              capture_output=True, text=True, check=False, timeout=SSH_TIMEOUT)
        if check and proc.returncode != 0:
            raise AssertionError("in %s: %s -> exit %d\n%s%s" % (
                self.name, command, proc.returncode, proc.stdout, proc.stderr))
        return proc

    def put(self, text, path, mode="0644"):
        self.ssh("install -D -m %s /dev/stdin %s" % (mode, path), data=text)

    def module(self, name, args, check=False, diff=False, verbosity=0, strategy="linear", task_vars=None):
        """Run kvmsec.hardening.NAME in the VM through Ansible; returns (result, full output).

        Ansible's own strategy by default: for a play of one remote task, Mitogen's start on the
        emulated host (sending and importing its core) costs what it saves (docs/lab.md)."""
        with tempfile.TemporaryDirectory() as tmp:
            result_file = Path(tmp) / "result.json"
            play = [{"hosts": self.name, "gather_facts": False, "tasks": [
                {"name": "module under test", "kvmsec.hardening." + name: args, "vars": task_vars or {},
                 "register": "under_test", "ignore_errors": True},
                {"name": "keep the result", "delegate_to": "localhost", "check_mode": False,
                 "ansible.builtin.copy": {"content": "{{ under_test | to_json }}",
                                          "dest": str(result_file), "mode": "0600"}},
            ]}]
            playbook = Path(tmp) / "module.yml"
            playbook.write_text(json.dumps(play))
            proc = self.playbook(playbook, check=check, diff=diff, verbosity=verbosity, strategy=strategy)
            try:
                result = json.loads(result_file.read_text())
            except (OSError, ValueError):
                raise AssertionError("ansible gave no result:\n%s\n%s" % (proc.stdout, proc.stderr))
        return result, proc.stdout + proc.stderr

    def playbook(self, path, extra_vars=None, check=False, diff=False, verbosity=0, strategy="mitogen_linear",
                 tags=None):
        """Run a playbook against the VM; returns the CompletedProcess (text)."""
        argv = ["ansible-playbook", "-i", self.inventory, str(path)]
        if tags:
            argv += ["--tags", tags]
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
        # Mitogen, as Molecule, for plays of many tasks: a Python interpreter per task is most of
        # a task's cost on the emulated host; the README's main command (test_kvm_host) proves
        # Ansible's own strategy
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=PLAYBOOK_TIMEOUT,
                              env=kvmlab.ansible_env(strategy))

    def reboot(self):
        self.info = kvmlab.reboot(self.name)


def boot_lab_vm(name, lsm="selinux", iommu=True, firmware="direct"):
    try:
        return LabVM(kvmlab.boot(name, lsm, iommu, firmware))
    except kvmlab.LabError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def lab_vm():
    booted = []

    def boot(name, lsm="selinux", iommu=True, firmware="direct"):
        vm = boot_lab_vm(name, lsm, iommu, firmware)
        booted.append(name)
        return vm

    yield boot
    for name in booted:
        kvmlab.stop(name)


@pytest.fixture(scope="session")
def selinux_vm():
    """One SELinux-enforcing VM without an IOMMU, shared by the lab files that run in this order:
    test_selinux_lab (policy modules), test_svirt_lab (labels, isolation) and
    test_vfio_bind_iommu_off, which stops it (one lab VM at a time). A boot costs
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


@pytest.fixture(scope="session")
def shipped():
    """shipped_tree(target): a copy of what a fresh clone holds, sharing the pinned virtualenv."""
    return shipped_tree


@pytest.fixture(scope="session")
def main_command():
    """The README's main command, scripts/harden-lab, run as a new user runs it: in a copy of
    what git ships (no .cache/collections link, no reports), sharing only the pinned virtualenv
    and the cached lab image. Yields (tree, CompletedProcess); the VM it leaves running is
    stopped at the end of the session, or earlier by the last file that uses it."""
    tree = Path(tempfile.mkdtemp(prefix="kvmsec-fresh-"))
    shipped_tree(tree)
    env = dict(os.environ)
    # as a new user runs it: Ansible's own linear strategy, the one run per CI that proves it
    for name in ("ANSIBLE_COLLECTIONS_PATH", "ANSIBLE_CONFIG", "ANSIBLE_STRATEGY", "ANSIBLE_STRATEGY_PLUGINS"):
        env.pop(name, None)
    try:
        proc = subprocess.run([str(tree / "scripts" / "harden-lab")], cwd=tree, env=env,
                              capture_output=True, text=True, check=False, timeout=MAIN_COMMAND_TIMEOUT)
        yield tree, proc
    finally:
        kvmlab.stop(MAIN_VM)
        shutil.rmtree(tree, ignore_errors=True)


@pytest.fixture(scope="session")
def main_vm(main_command):
    """The hardened SELinux VM the main command left running (it has the IOMMU)."""
    tree, proc = main_command
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    return LabVM(json.loads((tree / ".cache" / "harden-lab" / "vm.json").read_text()))


@pytest.fixture(scope="module")
def iommu_vm(request):
    """A VM with the emulated IOMMU: the main command's when test_kvm_host runs in this session
    (a boot fewer; the tests need no pristine host), else one of its own. Stopped when the file
    that asked for it finishes: one lab VM at a time."""
    if any(Path(str(item.fspath)).name == "test_kvm_host.py" for item in request.session.items):
        vm = request.getfixturevalue("main_vm")
    else:
        vm = boot_lab_vm("vfio-lab")
    yield vm
    kvmlab.stop(vm.name)
