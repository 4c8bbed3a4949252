"""libvirt_conf through Ansible on a copy of this machine's real /etc/libvirt/qemu.conf.

Check mode and diff, the change, a second run reporting no change, a backup, secrets kept out of
the output even at -vvv, of Ansible's log file and of what the module logs to syslog as it
starts, a broken file left alone; the edited file is read back by libvirt's own tooling where it
can be: ``libvirtd`` is not restarted here (other tests share it), so the parse check is the
core's and the lab tests restart a real daemon on the edited file.
"""

import os
import re
import shutil
from pathlib import Path

import pytest
from ansible_jobs import VENV_PYTHON, run_module

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


def module(args, *flags, **kwargs):
    return run_module("libvirt_conf", args, *flags, **kwargs)


SYSLOG_RECORDER = """
import os
import syslog


def record(*args):
    with open(os.environ["KVMSEC_TEST_SYSLOG"], "a") as handle:
        handle.write(args[-1] + "\\n")


syslog.syslog = record
"""


@pytest.fixture
def syslog_python(tmp_path):
    """(interpreter, file): a Python whose syslog() appends to the file what syslog would get.

    This machine runs no syslog daemon (no /dev/log) and no journal, so the line every module
    logs as it starts ("Invoked with ...") is caught where it leaves the module's process.
    """
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SYSLOG_RECORDER)
    log = tmp_path / "syslog"
    python = tmp_path / "python"
    python.write_text('#!/bin/sh\nPYTHONPATH=%s KVMSEC_TEST_SYSLOG=%s exec %s "$@"\n' % (site, log, VENV_PYTHON))
    python.chmod(0o755)
    return str(python), log


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


def test_a_secret_in_plain_settings_is_never_logged(qemu_conf, tmp_path, syslog_python, monkeypatch):
    python, syslog = syslog_python
    ansible_log = tmp_path / "ansible.log"
    monkeypatch.setenv("ANSIBLE_LOG_PATH", str(ansible_log))
    # a call with the secret in its place: the recorder sees the module's invocation line
    rc, dummy, dummy2 = module({"path": str(qemu_conf), "settings": {"remember_owner": 1},
                                "secret_settings": {"vnc_password": "R1ght-Pl4ce"}}, interpreter=python)
    assert rc == 0
    logged = syslog.read_text()
    assert "Invoked with" in logged and "secret_settings=NOT_LOGGING_PARAMETER" in logged
    assert "R1ght-Pl4ce" not in logged
    original = qemu_conf.read_text()
    for settings in ({"vnc_password": "Wr0ng-Pl4ce", "vnc_tls": 1}, {"spice_password": ["Wr0ng-Pl4ce"]},
                     "vnc_password=Wr0ng-Pl4ce vnc_tls=1"):
        rc, result, output = module({"path": str(qemu_conf), "settings": settings}, "-vvv", interpreter=python)
        assert rc != 0 and "give them in secret_settings" in result["msg"], result
        assert "Wr0ng-Pl4ce" not in output and "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER" in output
    assert "Wr0ng-Pl4ce" not in syslog.read_text()
    assert syslog.read_text().count(" settings=NOT_LOGGING_PARAMETER") == 3
    assert "Wr0ng-Pl4ce" not in ansible_log.read_text() and "give them in secret_settings" in ansible_log.read_text()
    assert qemu_conf.read_text() == original


@pytest.mark.parametrize("settings, message", [
    ({"max_processes": 1180591620717411303424}, "max_processes: 1180591620717411303424 is out of range"),
    ({"cgroup_device_acl": ["/dev/null", ["/dev/zero"]]}, "cgroup_device_acl: item 2 of the list is a list"),
    ({"max_files": 1.5}, "max_files: a decimal number is not a value"),
])
def test_values_libvirt_cannot_read_leave_the_file_alone(qemu_conf, settings, message):
    original = qemu_conf.read_text()
    for flags in ((), ("--check",)):
        rc, result, dummy = module({"path": str(qemu_conf), "settings": settings}, *flags)
        assert rc != 0 and message in result["msg"], result
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
