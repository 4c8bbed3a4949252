import os

import pytest

from ansible_collections.kvmsec.hardening.plugins.module_utils import _files


def test_atomic_write_creates_file_with_mode(tmp_path):
    target = tmp_path / "new.conf"
    _files.atomic_write(str(target), "a = 1\n", mode=0o600)
    assert target.read_text() == "a = 1\n"
    assert os.stat(target).st_mode & 0o777 == 0o600


def test_atomic_write_keeps_mode_owner_and_label_of_existing_file(tmp_path):
    target = tmp_path / "qemu.conf"
    target.write_text("old\n")
    os.chmod(target, 0o640)
    os.chown(target, 1234, 4321)
    label = b"system_u:object_r:virt_etc_t:s0\x00"
    os.setxattr(target, "security.selinux", label)
    _files.atomic_write(str(target), "new\n")
    stat = os.stat(target)
    assert target.read_text() == "new\n"
    assert (stat.st_mode & 0o777, stat.st_uid, stat.st_gid) == (0o640, 1234, 4321)
    assert os.getxattr(target, "security.selinux") == label
    assert [p.name for p in tmp_path.iterdir()] == ["qemu.conf"]


def test_atomic_write_failure_leaves_original_and_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "libvirtd.conf"
    target.write_text("original\n")

    def broken_rename(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(_files.os, "rename", broken_rename)
    with pytest.raises(OSError):
        _files.atomic_write(str(target), "replacement\n")
    assert target.read_text() == "original\n"
    assert [p.name for p in tmp_path.iterdir()] == ["libvirtd.conf"]


def test_read_text_default_for_missing(tmp_path):
    assert _files.read_text(str(tmp_path / "nope"), default="") == ""
    with pytest.raises(IOError):
        _files.read_text(str(tmp_path / "nope"))
