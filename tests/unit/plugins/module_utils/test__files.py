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


def test_change_to_is_none_when_the_file_already_holds_the_text(tmp_path):
    target = tmp_path / "kvm.rules"
    assert _files.change_to(str(target), None) is None
    change = _files.change_to(str(target), "-w /etc/libvirt\n", _files.PRIVATE, shown="/etc/audit/rules.d/kvm.rules")
    assert (change.before, change.after, change.mode) == (None, "-w /etc/libvirt\n", 0o600)
    assert change.diff() == dict(before="", after="-w /etc/libvirt\n", before_header="/etc/audit/rules.d/kvm.rules",
                                 after_header="/etc/audit/rules.d/kvm.rules")
    target.write_text("-w /etc/libvirt\n")
    assert _files.change_to(str(target), "-w /etc/libvirt\n") is None


def test_write_all_writes_every_change_with_directories_and_modes(tmp_path):
    kept = tmp_path / "kept.conf"
    kept.write_text("old\n")
    os.chmod(kept, 0o640)
    gone = tmp_path / "gone.conf"
    gone.write_text("remove me\n")
    new = tmp_path / "made" / "deeper" / "new.conf"
    changes = [_files.change_to(str(kept), "new\n"), _files.change_to(str(gone), None),
               _files.change_to(str(new), "fresh\n", _files.PRIVATE)]
    _files.write_all(changes)
    assert kept.read_text() == "new\n" and os.stat(kept).st_mode & 0o777 == 0o640
    assert not gone.exists()
    assert new.read_text() == "fresh\n" and os.stat(new).st_mode & 0o777 == 0o600
    assert os.stat(new.parent).st_mode & 0o777 == 0o755


def test_a_failure_of_then_puts_every_file_back_and_removes_directories_made(tmp_path):
    kept = tmp_path / "kept.conf"
    kept.write_text("old\n")
    gone = tmp_path / "gone.conf"
    gone.write_text("remove me\n")
    os.chmod(gone, 0o600)
    new = tmp_path / "made" / "deeper" / "new.conf"
    changes = [_files.change_to(str(kept), "new\n"), _files.change_to(str(gone), None),
               _files.change_to(str(new), "fresh\n")]

    def load():
        assert new.exists() and not gone.exists()
        raise RuntimeError("augenrules --load failed")

    with pytest.raises(RuntimeError, match="augenrules --load failed"):
        _files.write_all(changes, load)
    assert kept.read_text() == "old\n"
    assert gone.read_text() == "remove me\n" and os.stat(gone).st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gone.conf", "kept.conf"]


def test_a_failed_write_puts_back_those_before_it_and_leaves_the_rest(tmp_path, monkeypatch):
    first, second = tmp_path / "first.conf", tmp_path / "second.conf"
    first.write_text("1\n")
    second.write_text("2\n")
    changes = [_files.change_to(str(first), "one\n"), _files.change_to(str(second), "two\n")]
    real = _files.atomic_write

    def second_fails(path, content, mode=0o644):
        if path == str(second) and content == "two\n":
            raise OSError(28, "No space left on device", path)
        real(path, content, mode)

    monkeypatch.setattr(_files, "atomic_write", second_fails)
    with pytest.raises(OSError, match="No space left on device"):
        _files.write_all(changes)
    assert (first.read_text(), second.read_text()) == ("1\n", "2\n")


def test_a_file_that_cannot_be_put_back_is_named(tmp_path, monkeypatch):
    target = tmp_path / "sysctl.conf"
    target.write_text("old\n")
    change = _files.change_to(str(target), "new\n", shown="/etc/sysctl.d/90-kvmsec.conf")
    real = _files.atomic_write

    def restore_fails(path, content, mode=0o644):
        if content == "old\n":
            raise OSError(30, "Read-only file system", path)
        real(path, content, mode)

    def load():
        raise RuntimeError("sysctl refused")

    monkeypatch.setattr(_files, "atomic_write", restore_fails)
    with pytest.raises(_files.NotRestored) as caught:
        _files.write_all([change], load)
    assert str(caught.value) == ("sysctl refused; could not put back /etc/sysctl.d/90-kvmsec.conf "
                                 "(Read-only file system)")


def test_directories_made_before_a_failed_mkdir_are_removed(tmp_path, monkeypatch):
    target = tmp_path / "made" / "deeper" / "new.conf"
    real = _files.os.mkdir

    def deeper_fails(path, mode=0o777):
        if path.endswith("deeper"):
            raise OSError(13, "Permission denied", path)
        real(path, mode)

    monkeypatch.setattr(_files.os, "mkdir", deeper_fails)
    with pytest.raises(OSError, match="Permission denied"):
        _files.write_all([_files.change_to(str(target), "fresh\n")])
    assert list(tmp_path.iterdir()) == []
