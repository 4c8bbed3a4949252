"""The lab tooling itself: the image cache and what a failed boot tells the user."""

import os

import pytest

import kvmlab


def test_cached_image_is_reused_without_building(monkeypatch):
    image_dir = kvmlab.build()

    def no_build(*args, **kwargs):
        raise AssertionError("the cached image was rebuilt: %s" % (args,))

    monkeypatch.setattr(kvmlab.subprocess, "run", no_build)
    assert kvmlab.build() == image_dir
    assert image_dir.name == kvmlab.image_key()


def test_image_key_changes_with_its_inputs(monkeypatch):
    key = kvmlab.image_key()
    monkeypatch.setenv("KVMSEC_LAB_MIRROR", "http://mirror.invalid/debian")
    assert kvmlab.image_key() != key


def test_failed_boot_says_so_and_shows_the_serial_console(monkeypatch):
    # a real boot given far too little time: QEMU runs, the kernel prints, SSH cannot answer yet
    monkeypatch.setattr(kvmlab, "BOOT_TIMEOUT", 4)
    with pytest.raises(kvmlab.LabError) as failure:
        kvmlab.boot("lab-too-slow", "selinux", True)
    message = str(failure.value)
    assert "lab VM lab-too-slow did not answer SSH" in message
    assert "Serial console tail:" in message
    overlay = str(kvmlab.run_dir("lab-too-slow") / "disk.qcow2")
    assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and overlay in cmdline(pid)]
    assert (kvmlab.run_dir("lab-too-slow") / "serial.log").stat().st_size > 0
    kvmlab.stop("lab-too-slow")
    assert not kvmlab.run_dir("lab-too-slow").exists()


def cmdline(pid):
    try:
        with open("/proc/%s/cmdline" % pid, "rb") as handle:
            return handle.read().decode(errors="replace")
    except OSError:
        return ""
