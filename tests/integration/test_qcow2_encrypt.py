"""qcow2_encrypt and the image_encryption role through Ansible, against the real qemu-img,
qemu-io and libvirtd of this machine, with TCG guests.

Guest images live under /var/lib/libvirt/images so that the guests' QEMU (user libvirt-qemu)
can open them. The guests have no operating system: they sit in the firmware, which is enough
for QEMU to open (and decrypt) their disks, and reading a guest's disk through QEMU's own
block layer (HMP ``qemu-io``) proves the libvirt secret opened it.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from ansible_jobs import StartedModule, module_job, playbook_job

URI = "qemu:///system"
PASS = "q3-Integration-Passphrase-4c1e9b"


# ---------------------------------------------------------------------------------------------
# helpers


def secrets(extra=None):
    """The job's extra vars: the passphrase goes to ansible_jobs' memory-backed env/extravars."""
    return dict({"q3_pw": PASS}, **(extra or {}))


STATUS = {True: "CHANGED", False: "SUCCESS"}


def module(args, check=False, diff=False, extra=None):
    """Run the module through Ansible: (status as Ansible prints it, result, whole output)."""
    job = module_job("qcow2_encrypt", args, *(["--check"] if check else []) + (["--diff"] if diff else []),
                     extravars=secrets(extra))
    result = job.result()
    return ("FAILED!" if result.get("failed") else STATUS[bool(result.get("changed"))]), result, job.output


def encrypt_args(path, **kwargs):
    return dict({"path": str(path), "passphrase": "{{ q3_pw }}", "iter_time": 10}, **kwargs)


def qemu_img(*args):
    return subprocess.run(["qemu-img"] + list(args), check=True, capture_output=True, text=True).stdout


def make_image(path, size="64M", random_mib=0):
    if random_mib:
        raw = str(path) + ".raw"
        with open(raw, "wb") as handle:
            for dummy in range(random_mib):
                handle.write(os.urandom(1 << 20))
        qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, str(path))
        os.unlink(raw)
        qemu_img("resize", "-q", str(path), size)
    else:
        qemu_img("create", "-q", "-f", "qcow2", str(path), size)
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 1M 2M", str(path)], check=True, capture_output=True)
    return Path(path)


def passfile(directory, value=PASS, name="pass"):
    path = Path(directory) / name
    path.write_text(value)
    path.chmod(0o600)
    return path


def reads_back(path, passphrase_file, pattern="0x5a", share=False):
    opts = "driver=qcow2,file.filename=%s,encrypt.key-secret=s" % path + (",force-share=on" if share else "")
    proc = subprocess.run(["qemu-io", "-r", "--object", "secret,id=s,file=%s" % passphrase_file, "--image-opts",
                           opts, "-c", "read -P %s 1M 2M" % pattern], capture_output=True, text=True, check=False)
    return proc.returncode == 0 and "verification failed" not in proc.stdout + proc.stderr


def info(path):
    return json.loads(qemu_img("info", "--output=json", "-U", str(path)))


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def listing(directory):
    """{name: sha256} of the images in a directory (the extra-vars files left out)."""
    return dict((p.name, sha256(p)) for p in directory.iterdir() if not p.name.startswith("vars-"))


def virsh(*args, check=True):
    return subprocess.run(["virsh", "-c", URI] + list(args), check=check, capture_output=True, text=True)


@pytest.fixture
def images():
    """A directory the guests' QEMU can reach."""
    path = Path("/var/lib/libvirt/images") / ("kvmsec-q3-%s" % uuid.uuid4().hex[:8])
    path.mkdir(mode=0o755, parents=True)
    yield path
    shutil.rmtree(str(path), ignore_errors=True)


@pytest.fixture
def guests(libvirtd):
    """Define (and start) TCG guests with one disk; destroy and undefine them afterwards."""
    names, secrets = [], []

    def define(image, start=True):
        name = "kvmsec-q3-%s" % uuid.uuid4().hex[:8]
        xml = Path(str(image) + ".xml")
        xml.write_text(
            "<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/>"
            "<target dev='vda' bus='virtio'/></disk></devices></domain>" % (name, image))
        virsh("define", str(xml))
        xml.unlink()
        names.append(name)
        if start:
            virsh("start", name)
        return name

    define.secrets = secrets
    yield define
    for name in names:
        virsh("destroy", name, check=False)
        virsh("undefine", name, check=False)
    for secret in secrets:
        virsh("secret-undefine", secret, check=False)


def guest_reads(name, pattern="0x5a"):
    """Read the guest's disk through QEMU's block layer; qemu-io in HMP reports to the guest's log."""
    log = Path("/var/log/libvirt/qemu/%s.log" % name)
    size = log.stat().st_size
    virsh("qemu-monitor-command", name, "--hmp", 'qemu-io libvirt-1-format "read -P %s 1M 64k"' % pattern)
    deadline = time.monotonic() + 30
    while True:
        new = log.read_bytes()[size:].decode(errors="replace")
        if "bytes at offset" in new:
            return "verification failed" not in new
        assert time.monotonic() < deadline, "no qemu-io answer in %s" % log
        time.sleep(0.1)


def guest_disk_encrypted(name):
    nodes = json.loads(virsh("qemu-monitor-command", name, '{"execute":"query-named-block-nodes",'
                                                           '"arguments":{"flat":true}}').stdout)["return"]
    return [n["encrypted"] for n in nodes if n["node-name"] == "libvirt-1-format"] == [True]


# ---------------------------------------------------------------------------------------------
# the module


def test_check_apply_idempotence_and_verification(images):
    image = make_image(images / "vm.qcow2")
    before = sha256(image)
    status, result, output = module(encrypt_args(image), check=True, diff=True)
    assert status == "CHANGED" and result["changes"] == ["encrypt the plain image with LUKS"]
    assert '-    "encrypted": false,' in output and '+    "encrypt_format": "luks",' in output
    assert listing(images) == {"vm.qcow2": before}

    status, result, output = module(encrypt_args(image))
    assert status == "CHANGED" and result["encrypted"] and result["encrypt_format"] == "luks"
    assert result["cipher"] == {"cipher_alg": "aes-256", "cipher_mode": "xts", "ivgen_alg": "plain64",
                                "hash_alg": "sha256"}
    assert result["virtual_size"] == 64 << 20 and "kept as %s" % result["backup_file"] in output
    assert info(image)["encrypted"] is True
    assert reads_back(image, passfile(images)) and not reads_back(image, passfile(images, "wrong", "bad"))
    assert sha256(result["backup_file"]) == before and result["plaintext_backups"] == [result["backup_file"]]
    backup = result["backup_file"]

    for check in (False, True):
        status, result, output = module(encrypt_args(image), check=check)
        assert status == "SUCCESS" and result["changes"] == []
        # the backup outlives the run that made it: every later run names it
        assert result["plaintext_backups"] == [backup] and "kept as %s" % backup in output
    status, dummy, dummy2 = module(encrypt_args(image, state="verified"))
    assert status == "SUCCESS"
    status, result, dummy = module(encrypt_args(image, state="verified", passphrase="wrong"))
    assert status == "FAILED!" and "passphrase does not open the LUKS-encrypted image" in result["msg"]


def test_legacy_aes_image_is_re_encrypted(images):
    image = images / "legacy.qcow2"
    old = passfile(images, "old AES password", "old")
    # QEMU 7.2's qemu-img still creates legacy AES images; its system emulators refuse to run them
    qemu_img("create", "-q", "-f", "qcow2", "--object", "secret,id=o,file=%s" % old,
             "-o", "encrypt.format=aes,encrypt.key-secret=o", str(image), "64M")
    subprocess.run(["qemu-io", "--object", "secret,id=o,file=%s" % old, "--image-opts",
                    "driver=qcow2,file.filename=%s,encrypt.key-secret=o" % image, "-c", "write -P 0x5a 1M 2M"],
                   check=True, capture_output=True)
    args = encrypt_args(image, old_passphrase="{{ q3_old }}")
    status, result, dummy = module(args, extra={"q3_old": "old AES password"})
    assert status == "CHANGED" and result["changes"] == ["re-encrypt the legacy AES image with LUKS"]
    assert result["encrypt_format"] == "luks" and reads_back(image, passfile(images))
    status, dummy, dummy2 = module(args, extra={"q3_old": "old AES password"})
    assert status == "SUCCESS"


@pytest.mark.parametrize("kind, message", [
    ("missing", "does not exist"),
    ("raw", "is a raw image, not qcow2"),
    ("backing", "has a backing file"),
    ("base", "is the backing file of"),
])
def test_refusals_leave_the_host_unchanged(images, kind, message):
    base = make_image(images / "base.qcow2")
    top = images / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top))
    raw = images / "disk.img"
    qemu_img("create", "-q", "-f", "raw", str(raw), "8M")
    target = {"missing": images / "nope.qcow2", "raw": raw, "backing": top, "base": base}[kind]
    before = listing(images)
    status, result, dummy = module(encrypt_args(target))
    assert status == "FAILED!" and message in result["msg"]
    assert listing(images) == before


def test_guest_in_use_then_unattended_start_with_a_private_secret(images, guests):
    image = make_image(images / "guest.qcow2")
    name = guests(image)
    secret = str(uuid.uuid4())
    guests.secrets.append(secret)
    status, result, dummy = module(encrypt_args(image))
    assert status == "FAILED!" and result["msg"] == (
        "qcow2_encrypt: %s is in use by running libvirt guest %s; stop it first" % (image, name))
    assert result["in_use_by"] == [name]
    status, result, output = module(encrypt_args(image, when_in_use="skip"))
    assert status == "SUCCESS" and result["skipped_changes"] == ["encrypt the plain image with LUKS"]
    assert "in use by running libvirt guest %s: skipped" % name in output and not info(image).get("encrypted")

    virsh("destroy", name)
    args = encrypt_args(image, libvirt_secret={"uuid": secret})
    status, result, output = module(args, diff=True)
    assert status == "CHANGED" and result["libvirt_secret"] == secret
    assert result["changes"][1:] == ["define private libvirt secret %s for %s" % (secret, image),
                                     "use secret %s for disk vda of guest %s" % (secret, name)]
    assert '+        "%s": "luks secret %s"' % (name, secret) in output
    assert "private='yes'" in virsh("secret-dumpxml", secret).stdout
    assert "secret is private" in virsh("secret-get-value", secret, check=False).stderr
    assert "<secret type='passphrase' uuid='%s'/>" % secret in virsh("dumpxml", "--inactive", name).stdout

    virsh("start", name)
    assert virsh("domstate", name).stdout.strip() == "running"
    assert guest_disk_encrypted(name) and guest_reads(name) and not guest_reads(name, "0x11")
    assert info(image)["encrypted"] is True
    assert qemu_img("info", "-U", str(image)).count("encrypted: yes") == 1
    status, result, dummy = module(args)
    assert status == "SUCCESS" and result["in_use_by"] == [name] and result["changes"] == []


def test_passphrase_read_from_a_libvirt_secret(images, guests):
    image = make_image(images / "vm.qcow2")
    readable, private = str(uuid.uuid4()), str(uuid.uuid4())
    guests.secrets.extend([readable, private])
    for uid, flag in ((readable, "no"), (private, "yes")):
        xml = images / ("%s.xml" % uid)
        xml.write_text("<secret ephemeral='no' private='%s'><uuid>%s</uuid></secret>" % (flag, uid))
        virsh("secret-define", str(xml))
        virsh("secret-set-value", uid, "--file", str(passfile(images)), "--plain")
    valueless = str(uuid.uuid4())
    guests.secrets.append(valueless)
    xml = images / "valueless.xml"
    xml.write_text("<secret ephemeral='no' private='no'><uuid>%s</uuid></secret>" % valueless)
    virsh("secret-define", str(xml))
    args = {"path": str(image), "iter_time": 10}
    missing = str(uuid.uuid4())
    for secret, message in [
            (private, "passphrase_libvirt_secret %s is a private secret, whose value libvirt never hands out;"
                      " give passphrase or passphrase_file instead" % private),
            (missing, "passphrase_libvirt_secret %s: libvirt has no secret with this UUID; give the UUID of a"
                      " defined secret that is not private (virsh secret-list)" % missing),
            (valueless, "passphrase_libvirt_secret %s: libvirt cannot give its value" % valueless),
            ("web01", "passphrase_libvirt_secret 'web01' is not a UUID")]:
        status, result, dummy = module(dict(args, passphrase_libvirt_secret=secret))
        assert status == "FAILED!" and message in result["msg"], result["msg"]
    status, result, dummy = module(dict(args, passphrase_libvirt_secret=readable))
    assert status == "CHANGED" and reads_back(image, passfile(images))


def test_an_unreadable_passphrase_file_is_named_before_libvirt_is_asked(images):
    image = make_image(images / "vm.qcow2")
    good = passfile(images)
    before = listing(images)
    for option in ("passphrase_file", "old_passphrase_file"):
        args = {"path": str(image), "passphrase_file": str(good), "uri": "qemu:///nowhere"}
        args[option] = str(images / "no-such-file")
        status, result, dummy = module(args)
        assert status == "FAILED!" and result["msg"] == (
            "qcow2_encrypt: %s %s cannot be read (No such file or directory): give the path of a readable file on the managed"
            " host that holds the passphrase" % (option, images / "no-such-file"))
    assert listing(images) == before


def test_module_respawns_under_the_system_python_for_libvirt(images, guests, tmp_path):
    bare = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    python = str(bare / "bin" / "python")
    assert subprocess.run([python, "-c", "import libvirt"], capture_output=True, check=False).returncode != 0
    image = make_image(images / "vm.qcow2")
    name = guests(image)
    status, result, dummy = module(encrypt_args(image), extra={"ansible_python_interpreter": python})
    assert status == "FAILED!" and "running libvirt guest %s" % name in result["msg"]


# ---------------------------------------------------------------------------------------------
# faults and secret hygiene


def wait_for_conversion(images, job, min_bytes=64 << 20):
    """PID of qemu-img convert once its temporary file holds data (the copy is under way)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert job.running(), "the run ended before the conversion could be caught midway"
        temps = list(images.glob(".*.kvmsec-encrypt.*~"))
        if temps and temps[0].stat().st_size > min_bytes:
            for pid in os.listdir("/proc"):
                try:
                    cmdline = open("/proc/%s/cmdline" % pid, "rb").read().split(b"\0")
                except OSError:
                    continue
                if cmdline[:2] == [b"qemu-img", b"convert"] and str(temps[0]).encode() in cmdline:
                    return int(pid)
        time.sleep(0.01)
    raise AssertionError("no conversion seen")


def test_sigkill_of_qemu_img_midway_leaves_original_intact_and_no_stray_files(images):
    image = make_image(images / "big.qcow2", size="1G", random_mib=512)
    before = sha256(image)
    with StartedModule("qcow2_encrypt", encrypt_args(image), extravars=secrets()) as job:
        os.kill(wait_for_conversion(images, job), signal.SIGKILL)
        result = job.wait().result()
    assert result.get("failed") and "qemu-img convert failed (exit -9)" in result["msg"], result
    assert sha256(image) == before and qemu_img("check", str(image))
    assert listing(images) == {"big.qcow2": before}


def test_sigkill_of_the_module_and_qemu_img_midway_then_the_next_run_cleans_up(images):
    """The module's own process dies too (OOM killer, kill -9): no cleanup code can run."""
    image = make_image(images / "big.qcow2", size="1G", random_mib=512)
    before = sha256(image)
    with StartedModule("qcow2_encrypt", encrypt_args(image), extravars=secrets()) as job:
        converter = wait_for_conversion(images, job)
        with open("/proc/%d/stat" % converter) as handle:
            module_pid = int(handle.read().rsplit(")", 1)[1].split()[1])
        os.kill(module_pid, signal.SIGKILL)
        os.kill(converter, signal.SIGKILL)
        assert job.wait().result().get("failed")
    assert sha256(image) == before and qemu_img("check", str(image))
    leftovers = list(images.glob(".big.qcow2.kvmsec-encrypt.*~"))
    assert len(leftovers) == 1  # nothing could remove it
    status, result, dummy = module(encrypt_args(image, backup=False))
    assert status == "CHANGED", result
    assert "remove %s, left by an interrupted run" % leftovers[0] in result["changes"]
    assert list(listing(images)) == ["big.qcow2"]
    assert reads_back(image, passfile(images))


class CmdlineWatcher(threading.Thread):
    """Read every process's command line and environment until stopped, and what the secret
    objects of qemu-img read (``file=/dev/fd/N``: the target of that descriptor)."""

    def __init__(self, needle):
        super(CmdlineWatcher, self).__init__(daemon=True)
        self.needle = needle.encode()
        self.leaks, self.conversions, self.secret_sources = [], 0, set()
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            for pid in os.listdir("/proc"):
                for what in ("cmdline", "environ"):
                    try:
                        data = open("/proc/%s/%s" % (pid, what), "rb").read()
                    except OSError:
                        continue
                    if self.needle in data:
                        self.leaks.append((pid, what, data[:200]))
                    if what == "cmdline" and data.startswith(b"qemu-img\0convert\0"):
                        self.conversions += 1
                        self.secret_sources.update(self.sources(pid, data))
            time.sleep(0.005)

    @staticmethod
    def sources(pid, cmdline):
        found = []
        for fd in re.findall(rb"secret,id=\w+,file=([^,\0]+)", cmdline):
            try:
                found.append(os.readlink("/proc/%s/fd/%s" % (pid, fd.decode().rsplit("/", 1)[1])))
            except (OSError, IndexError):
                found.append(fd.decode())   # not a descriptor: a file, or the process is gone
        return found


def test_passphrase_never_on_a_command_line_nor_in_verbose_output(images, tmp_path):
    image = make_image(images / "vm.qcow2", size="512M", random_mib=256)
    playbook = tmp_path / "encrypt.yml"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - kvmsec.hardening.qcow2_encrypt:\n        path: %s\n        passphrase: '{{ q3_pw }}'\n"
        "      register: q3_result\n    - ansible.builtin.debug:\n        var: q3_result\n" % image)
    watcher = CmdlineWatcher(PASS)
    watcher.start()
    try:
        job = playbook_job(playbook, "-vvv", extravars=secrets())
    finally:
        watcher.done.set()
        watcher.join()
    output = job.output
    assert job.rc == 0, output
    assert watcher.conversions > 0, "the watcher never saw the conversion: it proves nothing"
    assert watcher.leaks == []
    # QEMU read the passphrase from a pipe: no file held it, on disk or tmpfs
    assert watcher.secret_sources and all(src.startswith("pipe:[") for src in watcher.secret_sources), \
        watcher.secret_sources
    assert PASS not in output and "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER" in output
    assert '"encrypt_format": "luks"' in output and reads_back(image, passfile(images))


# ---------------------------------------------------------------------------------------------
# the role


def role_playbook(tmp_path, role_vars):
    path = tmp_path / "role.yml"
    path.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "vars": role_vars,
                                 "roles": [{"role": "kvmsec.hardening.image_encryption"}]}]))
    return path


def play(playbook, check=False):
    """Run a playbook on localhost: (changed, failed, whole output)."""
    job = playbook_job(playbook, *(["--check"] if check else []), extravars=secrets())
    return job.recap() + (job.output,)


def test_role_restarts_a_running_guest_and_it_runs_from_the_encrypted_image(images, guests, tmp_path):
    image = make_image(images / "guest.qcow2")
    name = guests(image)
    playbook = role_playbook(tmp_path, {
        "image_encryption_images": [{"path": str(image), "passphrase": "{{ q3_pw }}"}],
        "image_encryption_restart_guests": True,
        # this guest has no OS to answer the ACPI shutdown request: the role powers it off
        "image_encryption_shutdown_timeout": 5, "image_encryption_force_off": True,
        "image_encryption_iter_time": 10, "image_encryption_keep_backups": False})
    changed, failed, output = play(playbook, check=True)
    assert failed == 0 and virsh("domstate", name).stdout.strip() == "running" and not info(image).get("encrypted")
    changed, failed, output = play(playbook)
    assert failed == 0 and changed > 0, output
    secret = re.search(r"<secret type='passphrase' uuid='([0-9a-f-]+)'/>",
                       virsh("dumpxml", "--inactive", name).stdout).group(1)
    guests.secrets.append(secret)
    assert virsh("domstate", name).stdout.strip() == "running"
    assert guest_disk_encrypted(name) and guest_reads(name)
    assert info(image)["encrypted"] is True and PASS not in output
    changed, failed, output = play(playbook)
    assert (changed, failed) == (0, 0), output


def test_role_encrypts_the_qcow2_volumes_of_a_pool(images, guests, tmp_path):
    pool = "kvmsec-q3-%s" % uuid.uuid4().hex[:8]
    first, second = make_image(images / "a.qcow2"), make_image(images / "b.qcow2")
    raw = images / "c.img"
    qemu_img("create", "-q", "-f", "raw", str(raw), "8M")
    virsh("pool-create-as", pool, "dir", "--target", str(images))
    try:
        playbook = role_playbook(tmp_path, {"image_encryption_pools": [pool],
                                            "image_encryption_passphrase": "{{ q3_pw }}",
                                            "image_encryption_iter_time": 10})
        changed, failed, output = play(playbook)
        assert failed == 0 and changed > 0, output
        for image in (first, second):
            assert info(image)["encrypted"] is True and reads_back(image, passfile(images))
            guests.secrets.append(str(uuid.uuid5(uuid.UUID("361E6D51-FAEC-444A-9079-341386DA8E2E"),
                                                 "localhost:%s" % image)))
        assert info(raw)["format"] == "raw"
        assert "<encryption format='luks'" in virsh("vol-dumpxml", str(first)).stdout
        assert len(list(images.glob("*.qcow2.*~"))) == 2  # the plaintext backups, kept by default
        changed, failed, output = play(playbook)
        assert (changed, failed) == (0, 0), output
    finally:
        virsh("pool-destroy", pool, check=False)


def audit_and_harden(tmp_path, hardening_playbook, role_vars, host_vars=None):
    """Runs image_encryption the way harden-kvm.yml does, with the report play after it, on
    localhost as the one kvm_hosts host: returns run(check) -> (output, IMAGE-ENC-01 result)."""
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"kvm_hosts": {"hosts": {"localhost": dict(
        {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
         "kvmsec_fail_severity": "none"}, **(host_vars or {}))}}}))
    playbook = hardening_playbook(tmp_path / "harden.yml", vars=role_vars,
                                  roles=[{"role": "kvmsec.hardening.image_encryption"}])

    def run(check):
        job = playbook_job(playbook, *(["--check"] if check else []), inventory=str(inventory),
                           extravars=secrets({"kvmsec_report_dir": str(tmp_path / "report")}))
        assert job.rc == 0, job.output
        report = json.loads((tmp_path / "report" / "localhost.json").read_text())
        return job.output, next(c for c in report["controls"] if c["id"] == "IMAGE-ENC-01")
    return run


def test_the_audit_fails_while_a_plaintext_backup_is_left_and_the_role_removes_it(
        images, guests, tmp_path, hardening_playbook):
    image = make_image(images / "guest.qcow2")
    name = guests(image)
    role_vars = {"image_encryption_images": [{"path": str(image), "passphrase": "{{ q3_pw }}"}],
                 "image_encryption_restart_guests": True, "image_encryption_shutdown_timeout": 5,
                 "image_encryption_force_off": True, "image_encryption_iter_time": 10}
    run = audit_and_harden(tmp_path, hardening_playbook, role_vars)
    output, control = run(check=False)
    guests.secrets.append(re.search(r"<secret type='passphrase' uuid='([0-9a-f-]+)'/>",
                                    virsh("dumpxml", "--inactive", name).stdout).group(1))
    backups = [str(path) for path in images.glob("guest.qcow2.*~")]
    assert control["status"] == "fixed" and len(backups) == 1, control
    # the backup is the plaintext: the audit fails naming it, and changes nothing
    output, control = run(check=True)
    assert control["status"] == "fail", control
    assert backups[0] in control["evidence"][0]["text"] and PASS not in output
    assert [str(path) for path in images.glob("guest.qcow2.*~")] == backups
    # accepted for the transition until a date
    waived = audit_and_harden(tmp_path, hardening_playbook, role_vars, {"kvmsec_waivers": [
        {"control": "IMAGE-ENC-01", "justification": "rollback window", "owner": "virt-team",
         "expires": "2999-12-31"}]})
    assert waived(check=True)[1]["status"] == "waived"
    # the guest runs from the encrypted image: the role may drop the backup, and the audit passes
    assert virsh("domstate", name).stdout.strip() == "running" and guest_disk_encrypted(name)
    remove = audit_and_harden(tmp_path, hardening_playbook, dict(role_vars, image_encryption_remove_backups=True))
    output, control = remove(check=False)
    assert not list(images.glob("guest.qcow2.*~")) and control["status"] == "fixed", control
    output, control = remove(check=True)
    assert control["status"] == "pass", control
