"""The kernel_arguments core over a temporary root.

/proc/cmdline is a plain file here (mocked: this machine's is its own kernel's). update-grub and
grubby are the boot loader's and are not installed on this machine: the GRUB stand-in sources
/etc/default/grub and its drop-ins with the real ``sh``, as grub-mkconfig does, and writes the
first entry's ``linux`` line; the grubby stand-in keeps one entry's arguments as grubby would.
The lab's bootloader test runs the real update-grub and boots what it wrote."""

import os
import re
import subprocess

import pytest

from ansible_collections.kvmsec.hardening.plugins.module_utils import _kernel_arguments as core
from ansible_collections.kvmsec.hardening.plugins.module_utils._command import CommandError
from ansible_collections.kvmsec.hardening.tests.unit.plugins.module_utils.host_tree import put, read
from ansible_collections.kvmsec.hardening.tests.unit.plugins.module_utils.module_stub import returned

GRUB_BOOT = "BOOT_IMAGE=/boot/vmlinuz-6.1.0-28-amd64 root=UUID=0f0e ro"


class Grub(object):
    """update-grub's stand-in: what the files give GRUB_CMDLINE_LINUX and its _DEFAULT, through sh."""

    def __init__(self, root, fail=False):
        self.root = root
        self.fail = fail
        self.calls = []

    def __call__(self, argv, data=None):
        self.calls.append(list(argv))
        assert argv == [core.UPDATE_GRUB]
        if self.fail:
            return 1, "", "grub-mkconfig: error: out of disk space"
        script = ('. "$1/etc/default/grub"; for f in "$1"/etc/default/grub.d/*.cfg; do [ -e "$f" ] && . "$f"; done; '
                  'printf "%s %s" "$GRUB_CMDLINE_LINUX" "$GRUB_CMDLINE_LINUX_DEFAULT"')
        words = subprocess.run(["sh", "-c", script, "sh", self.root], check=True, capture_output=True,
                               text=True).stdout.split()
        put(self.root, "boot/grub/grub.cfg", "menuentry 'Debian' {\n\tlinux\t/boot/vmlinuz-6.1.0-28-amd64 "
            "root=UUID=0f0e ro %s\n}\n" % " ".join(words))
        return 0, "", ""


@pytest.fixture
def grub_host(tmp_path):
    root = str(tmp_path)
    put(root, "proc/cmdline", GRUB_BOOT + " quiet mitigations=off nosmap\n")
    put(root, "usr/sbin/update-grub", "")
    put(root, "etc/default/grub", 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet mitigations=off"\n'
                                  'GRUB_CMDLINE_LINUX="nosmap console=ttyS0"\n')
    Grub(root)(["/usr/sbin/update-grub"])
    return root


def decide(root, run, arguments=(), absent=(), owner="kernel", **kwargs):
    return lambda: core.decide(run, owner, list(arguments), list(absent), root=root, **kwargs)


def test_words_keys_and_values_as_the_kernel_reads_them():
    assert core.split(' a  b="x y" c=1\n') == ["a", 'b="x y"', "c=1"]
    assert core.key("kvm-intel.vmentry_l1d_flush=never") == "kvm_intel.vmentry_l1d_flush"
    assert core.value("mitigations=auto,nosmt") == "auto,nosmt" and core.value("nosmt") is None
    # the last value of a key is the one the kernel keeps: an earlier one it replaces undoes nothing
    assert core.unmet(["mitigations=off", "mitigations=auto"], ["mitigations=auto"], ["mitigations=off"]) == ([], [])
    assert core.unmet(["mitigations=auto", "mitigations=off"], ["mitigations=auto"], []) == (
        ["mitigations=auto"], ["mitigations=off"])
    # a flag counts wherever it stands
    assert core.unmet(["nosmap", "quiet"], [], ["nosmap"]) == ([], ["nosmap"])
    # KEY=VALUE in absent takes that value only, KEY every value
    assert core.unmet(["mitigations=auto", "nosmap", "spectre_v2=on"], [], ["mitigations=off", "nosmap"]) == (
        [], ["nosmap"])
    assert core.unmet(["iommu.strict=0", "iommu.passthrough=1"], [], ["iommu.strict"]) == ([], ["iommu.strict=0"])


def test_drop_in_editor_keeps_one_line_per_owner():
    blocks = core.merge_own([], "iommu_vfio", ["intel_iommu=on", "iommu=pt"], [])
    assert blocks == [("iommu_vfio", ["intel_iommu=on", "iommu=pt"])]
    # another owner's line stays; an owner's line is exactly what it asks for now
    blocks = core.merge_own(blocks, "kernel", ["mitigations=auto,nosmt", "module.sig_enforce=1"], ["nosmap"])
    blocks = core.merge_own(blocks, "kernel", ["mitigations=auto,nosmt"], ["nosmap"])
    assert blocks == [("iommu_vfio", ["intel_iommu=on", "iommu=pt"]), ("kernel", ["mitigations=auto,nosmt"])]
    text = core.render_own(blocks)
    assert text.endswith('# owner: iommu_vfio\nGRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX intel_iommu=on iommu=pt"\n'
                         '# owner: kernel\nGRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX mitigations=auto,nosmt"\n')
    assert core.own_blocks(text) == blocks
    assert core.render_own(core.merge_own(blocks, "kernel", [], [])).count("# owner:") == 1
    assert core.render_own([("kernel", [])]) is None
    # two roles that disagree on a key are refused, naming both
    with pytest.raises(core.ArgumentError, match="iommu=pt, which iommu_vfio sets in .*, is refused or set otherwise "
                                                 "by kernel"):
        core.merge_own(blocks, "kernel", ["iommu=off"], [])


def test_other_files_lose_only_the_words_that_undo_the_arguments():
    text = ('# keep me\nGRUB_CMDLINE_LINUX_DEFAULT="quiet mitigations=off"  # perf, 2019\n'
            "export GRUB_CMDLINE_LINUX='$GRUB_CMDLINE_LINUX nosmap splash'\nGRUB_TIMEOUT=5\n")
    assert core.edit_assignments(text, ["mitigations=auto"], ["nosmap"]) == (
        '# keep me\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"  # perf, 2019\n'
        "export GRUB_CMDLINE_LINUX='$GRUB_CMDLINE_LINUX splash'\nGRUB_TIMEOUT=5\n", [])
    assert core.edit_assignments("GRUB_CMDLINE_LINUX=nosmap # x\n", [], ["nosmap"]) == ('GRUB_CMDLINE_LINUX="" # x\n', [])
    # what it cannot rewrite safely it leaves as written, and names when it undoes the arguments
    involved = ('GRUB_CMDLINE_LINUX="console=ttyS0 \\\n nosmap"\n'
                'GRUB_CMDLINE_LINUX_DEFAULT="$(cat /etc/extra) mitigations=off"\n'
                'GRUB_CMDLINE_LINUX="console=ttyS0 net.ifnames=0 \\$kvmlab_args"\n')
    assert core.edit_assignments(involved, ["mitigations=auto"], ["nosmap"]) == (involved, [1, 3])


@pytest.mark.parametrize("arguments, absent, bootloader, message", [
    (["a b"], [], "auto", "arguments: 'a b' is not a plain kernel argument"),
    (["console=ttyS0;reboot"], ["$(reboot)"], "auto", "arguments: 'console=ttyS0;reboot' is not a plain kernel"),
    (['x="1"'], ["$(reboot)"], "auto", "absent: '$(reboot)' is not a plain kernel argument"),
    (["nosmt"], ["nosmt"], "auto", "nosmt both in arguments and absent"),
    (["spectre-v2=off"], ["spectre_v2=off"], "auto", "spectre-v2=off both in arguments and absent"),
    (["iommu=pt", "iommu=off"], [], "auto", "arguments: iommu given more than once"),
    ([], [], "lilo", "bootloader: 'lilo' is not one of auto, grub, grubby, none"),
])
def test_bad_input_is_refused_naming_the_option(grub_host, arguments, absent, bootloader, message):
    before = read(grub_host, "etc/default/grub")
    with pytest.raises(core.ArgumentError, match=re.escape(message)):
        core.decide(Grub(grub_host), "kernel", arguments, absent, bootloader, root=grub_host)
    assert read(grub_host, "etc/default/grub") == before


def test_check_mode_predicts_and_writes_nothing(grub_host):
    run = Grub(grub_host)
    result, warnings = returned(decide(grub_host, run, ["mitigations=auto,nosmt"], ["nosmap"]), check_mode=True)
    assert result["changed"] and result["bootloader"] == "grub" and result["regenerated"]
    assert result["files"] == ["/etc/default/grub", core.DROPIN]
    assert result["missing"] == ["mitigations=auto,nosmt"] and result["unwanted"] == ["mitigations=off", "nosmap"]
    assert result["reboot_required"] and warnings == []
    assert run.calls == [] and not os.path.exists(os.path.join(grub_host, core.DROPIN.lstrip("/")))
    assert "-GRUB_CMDLINE_LINUX_DEFAULT=\"quiet mitigations=off\"" not in str(result["diff"])
    assert [d["after_header"] for d in result["diff"]] == ["/etc/default/grub", core.DROPIN]


def test_apply_writes_one_drop_in_regenerates_once_and_a_second_run_changes_nothing(grub_host):
    run = Grub(grub_host)
    result, dummy = returned(decide(grub_host, run, ["mitigations=auto,nosmt"], ["nosmap", "mitigations=off"]))
    assert result["changed"] and run.calls == [[core.UPDATE_GRUB]]
    assert read(grub_host, "etc/default/grub") == (
        'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX="console=ttyS0"\n')
    assert result["configured"] == ["console=ttyS0", "mitigations=auto,nosmt", "quiet"]
    assert result["reboot_required"]
    # a second role adds its own keys to the same drop-in
    result, dummy = returned(decide(grub_host, run, ["intel_iommu=on", "iommu=pt"], ["iommu.strict"], owner="iommu_vfio"))
    assert core.own_blocks(read(grub_host, core.DROPIN)) == [
        ("kernel", ["mitigations=auto,nosmt"]), ("iommu_vfio", ["intel_iommu=on", "iommu=pt"])]
    assert result["files"] == [core.DROPIN] and len(run.calls) == 2
    again, dummy = returned(decide(grub_host, run, ["mitigations=auto,nosmt"], ["nosmap", "mitigations=off"]))
    assert not again["changed"] and len(run.calls) == 2 and again["reboot_required"]
    # after the reboot the running kernel has them
    put(grub_host, "proc/cmdline", GRUB_BOOT + " console=ttyS0 mitigations=auto,nosmt intel_iommu=on iommu=pt quiet\n")
    booted, dummy = returned(decide(grub_host, run, ["mitigations=auto,nosmt"], ["nosmap", "mitigations=off"]))
    assert not booted["changed"] and not booted["reboot_required"] and booted["missing"] == booted["unwanted"] == []


def test_without_regenerate_the_files_are_written_and_the_regeneration_left_to_one_later_call(grub_host):
    run = Grub(grub_host)
    first, dummy = returned(decide(grub_host, run, ["mitigations=auto,nosmt"], regenerate=False))
    second, dummy = returned(decide(grub_host, run, ["iommu.strict=1"], regenerate=False, owner="iommu_vfio"))
    assert first["regenerate_required"] and second["regenerate_required"] and run.calls == []
    # the first handler's call: nothing left to write, one update-grub for both owners
    last, dummy = returned(decide(grub_host, run, ["mitigations=auto,nosmt"]))
    assert last["changed"] and last["files"] == [] and last["regenerated"] and run.calls == [[core.UPDATE_GRUB]]
    assert "iommu.strict=1" in last["configured"]
    # the second handler's finds the configuration current
    other, dummy = returned(decide(grub_host, run, ["iommu.strict=1"], owner="iommu_vfio"))
    assert not other["changed"] and len(run.calls) == 1


def test_a_failing_update_grub_puts_every_file_back(grub_host):
    before = read(grub_host, "etc/default/grub")
    with pytest.raises(CommandError, match="out of disk space"):
        returned(decide(grub_host, Grub(grub_host, fail=True), ["mitigations=auto"], ["nosmap"]))
    assert read(grub_host, "etc/default/grub") == before
    assert not os.path.exists(os.path.join(grub_host, core.DROPIN.lstrip("/")))


def test_a_line_too_involved_to_rewrite_is_named_and_no_reboot_is_asked_for(grub_host):
    with open(os.path.join(grub_host, "etc/default/grub"), "a") as handle:
        handle.write('GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT \\\n  nosmap"\n')
    run = Grub(grub_host)
    returned(decide(grub_host, run, ["mitigations=auto"], ["nosmap"]))
    result, warnings = returned(decide(grub_host, run, ["mitigations=auto"], ["nosmap"]))
    # written once; after that nothing changes until the operator edits the line, and no reboot helps
    assert not result["changed"] and len(run.calls) == 1
    assert result["unedited"] == ["/etc/default/grub line 4"] and not result["reboot_required"]
    assert warnings == ["/etc/default/grub line 4 sets GRUB_CMDLINE_LINUX in a way this module does not rewrite (a "
                        "continued, escaped or computed value) and undoes these arguments there: edit it by hand; a "
                        "reboot would not help until then"]


def test_a_drop_in_read_after_ours_that_sets_the_line_anew_is_reported(grub_host):
    put(grub_host, "etc/default/grub.d/zz-vendor.cfg", 'GRUB_CMDLINE_LINUX="console=tty0"\n')
    result, warnings = returned(decide(grub_host, Grub(grub_host), ["iommu.strict=1"]))
    assert not result["reboot_required"] and "iommu.strict=1" not in result["configured"]
    assert warnings == ["update-grub ran, yet the next boot still lacks iommu.strict=1: a file read after "
                        "%s sets GRUB_CMDLINE_LINUX anew, so a reboot would not help" % core.DROPIN]


def test_a_kernel_no_boot_loader_started_gets_nothing_written(grub_host):
    put(grub_host, "proc/cmdline", "root=/dev/vda rw console=ttyS0 mitigations=off\n")
    run = Grub(grub_host)
    result, warnings = returned(decide(grub_host, run, ["mitigations=auto"], ["nosmap"]))
    assert not result["changed"] and result["bootloader"] == "none" and run.calls == []
    assert result["unwanted"] == ["mitigations=off"] and not result["reboot_required"]
    assert warnings == ["the running kernel was not started by a boot loader (no BOOT_IMAGE= on its command line), "
                        "so nothing is written: the running kernel lacks mitigations=auto and has mitigations=off; "
                        "set that where this host's kernel command line is set"]


def test_grubby_edits_every_kernel(tmp_path):
    root = str(tmp_path)
    put(root, "proc/cmdline", GRUB_BOOT + " rhgb mitigations=off\n")
    put(root, "usr/sbin/grubby", "")
    args = ["ro", "rhgb", 'dyndbg="module kvm +p"', "mitigations=off", "nosmap"]
    calls = []

    def grubby(argv, data=None):
        calls.append(argv)
        if argv[1] == "--info=DEFAULT":
            return 0, 'index=0\nkernel="/boot/vmlinuz-5.14"\nargs="%s"\nroot="/dev/sda2"\n' % " ".join(args), ""
        if argv[2].startswith("--remove-args="):
            args[:] = [w for w in args if w not in argv[2].split("=", 1)[1].split()]
        else:
            added = argv[2].split("=", 1)[1].split()
            args[:] = [w for w in args if core.key(w) not in [core.key(a) for a in added]] + added
        return 0, "", ""

    result, dummy = returned(lambda: core.decide(grubby, "kernel", ["mitigations=auto"], ["nosmap"], root=root))
    assert result["bootloader"] == "grubby" and result["changed"]
    assert result["grubby_removed"] == ["nosmap"] and result["grubby_added"] == ["mitigations=auto"]
    assert calls[1:] == [["/usr/sbin/grubby", "--update-kernel=ALL", "--remove-args=nosmap"],
                         ["/usr/sbin/grubby", "--update-kernel=ALL", "--args=mitigations=auto"]]
    assert result["reboot_required"] and result["configured"] == ["ro", "rhgb", 'dyndbg="module kvm +p"', "mitigations=auto"]
