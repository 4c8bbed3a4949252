"""libvirt_conf through Ansible on a copy of this machine's real /etc/libvirt/qemu.conf.

Check mode and diff, the change, a second run reporting no change, a backup, secrets kept out of
the output even at -vvv, a broken file left alone; the edited file is read back by libvirt's
own tooling where it can be: ``libvirtd`` is not restarted here (other tests share it), so the
parse check is the core's and the lab tests restart a real daemon on the edited file.
"""

import os
import re
import shutil
from pathlib import Path

import pytest
from localhost_module import run_module

from ansible_collections.kvmsec.hardening.plugins.module_utils import _libvirt_conf as conf

SETTINGS = {"security_driver": "selinux", "security_default_confined": 1,
            "security_require_confined": True, "dynamic_ownership": 1, "remember_owner": 1,
            "user": "libvirt-qemu", "group": "libvirt-qemu"}
SECRETS = {"vnc_password": "s3cr3t-Pw"}


@pytest.fixture
def qemu_conf(tmp_path):
    if not os.path.exists("/etc/libvirt/qemu.conf"):
        pytest.fail("libvirt is not installed: run scripts/bootstrap")
    path = tmp_path / "qemu.conf"
    shutil.copy("/etc/libvirt/qemu.conf", path)
    os.chmod(path, 0o600)
    return path


def module(args, *flags):
    return run_module("libvirt_conf", args, *flags)


def test_check_apply_and_second_run(qemu_conf):
    original = qemu_conf.read_text()
    args = {"path": str(qemu_conf), "settings": SETTINGS, "secret_settings": SECRETS}
    rc, checked, output = module(args, "--check", "--diff")
    assert rc == 0 and checked["changed"]
    assert "+security_require_confined = 1" in output
    assert qemu_conf.read_text() == original

    rc, applied, output = module(args, "--diff")
    assert rc == 0 and applied["changed"]
    assert sorted(change["key"] for change in applied["changes"]) == sorted(list(SETTINGS) + list(SECRETS))
    values = conf.values(qemu_conf.read_text())
    assert values["security_require_confined"] == 1 and values["user"] == "libvirt-qemu"
    assert oct(qemu_conf.stat().st_mode & 0o777) == "0o600"

    rc, again, dummy = module(args)
    assert rc == 0 and again["changed"] is False and again["changes"] == []


def test_secret_values_never_reach_the_output(qemu_conf):
    rc, result, output = module({"path": str(qemu_conf), "settings": SETTINGS,
                                 "secret_settings": SECRETS}, "--diff", "-vvv")
    assert rc == 0 and result["changed"]
    assert "s3cr3t-Pw" not in output
    assert "vnc_password = ********" in output
    assert conf.values(qemu_conf.read_text())["vnc_password"] == "s3cr3t-Pw"


def test_a_secret_in_plain_settings_is_refused_before_anything_is_read(qemu_conf):
    original = qemu_conf.read_text()
    rc, result, output = module({"path": str(qemu_conf), "settings": {"spice_password": "s3cr3t-Pw"}})
    assert rc != 0 and "give them in secret_settings" in result["msg"]
    assert qemu_conf.read_text() == original


def test_backup_keeps_the_previous_file(qemu_conf):
    original = qemu_conf.read_text()
    rc, result, dummy = module({"path": str(qemu_conf), "settings": {"remember_owner": 0}, "backup": True})
    assert rc == 0 and result["changed"]
    assert Path(result["backup_file"]).read_text() == original


def test_a_broken_file_is_left_alone_and_the_line_named(qemu_conf):
    broken = qemu_conf.read_text() + "\ncgroup_device_acl = [\n    \"/dev/null\",\n"
    qemu_conf.write_text(broken)
    rc, result, dummy = module({"path": str(qemu_conf), "settings": {"remember_owner": 1}})
    assert rc != 0
    assert re.search(r"line \d+: list is never closed", result["msg"])
    assert qemu_conf.read_text() == broken


def test_a_missing_file_says_so(tmp_path):
    rc, result, dummy = module({"path": str(tmp_path / "nope.conf"), "settings": {"a": 1}})
    assert rc != 0 and "cannot read" in result["msg"] and "libvirt installed" in result["msg"]
