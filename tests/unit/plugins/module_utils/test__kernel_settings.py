"""The kernel_settings core over a temporary root: /proc/sys, /proc/modules and /sys/module are
plain files here (mocked: this development machine's real /proc/sys is the machine's own
kernel, which a unit test must not change). The lab's Molecule verify runs it for real."""

import os

import pytest

from ansible_collections.kvmsec.hardening.plugins.module_utils import _kernel_settings as core
from ansible_collections.kvmsec.hardening.tests.unit.plugins.module_utils.host_tree import put, read
from ansible_collections.kvmsec.hardening.tests.unit.plugins.module_utils.module_stub import returned

SYSCTL_FILE = "/etc/sysctl.d/99-zz-kvmsec-hardening.conf"
MODPROBE_FILE = "/etc/modprobe.d/kvmsec-hardening.conf"


@pytest.fixture
def host(tmp_path):
    put(tmp_path, "proc/sys/kernel/kptr_restrict", "0\n")
    put(tmp_path, "proc/sys/kernel/yama/ptrace_scope", "1\n")
    put(tmp_path, "proc/sys/net/ipv4/ip_local_port_range", "32768\t60999\n")
    put(tmp_path, "proc/sys/net/ipv4/conf/eth0.100/rp_filter", "0\n")
    put(tmp_path, "proc/modules", "kvm_intel 405504 0 - Live 0x0\nusb_storage 81920 0 - Live 0x0\n")
    put(tmp_path, "sys/module/kvm_intel/parameters/nested", "Y\n")
    return str(tmp_path)


def test_names_and_values_as_sysctl_reads_them():
    assert core.proc_path("kernel.yama.ptrace_scope") == "proc/sys/kernel/yama/ptrace_scope"
    assert core.proc_path("net.ipv4.conf.eth0/100.rp_filter") == "proc/sys/net/ipv4/conf/eth0.100/rp_filter"
    assert core.normalize("32768\t60999\n") == core.normalize(" 32768  60999") == "32768 60999"
    assert core.parse_sysctl("# c\n; c\nkernel.sysrq=0\n-net.ipv4.ip_forward = 1\nkernel/dmesg_restrict = 1\n") == {
        "kernel.sysrq": "0", "net.ipv4.ip_forward": "1", "kernel.dmesg_restrict": "1"}


def test_plan_writes_the_file_and_the_values_that_differ(host):
    wanted = {"kernel.kptr_restrict": 2, "kernel.yama.ptrace_scope": "1",
              "net.ipv4.ip_local_port_range": "32768 60999", "net.ipv4.conf.eth0/100.rp_filter": 1,
              "kernel.no_such_setting": 1}
    plan = core.plan(host, "test", sysctl=wanted, sysctl_file=SYSCTL_FILE)
    assert [(c["name"], c["before"], c["after"]) for c in plan.live] == [
        ("kernel.kptr_restrict", "0", "2"), ("net.ipv4.conf.eth0/100.rp_filter", "0", "1")]
    assert plan.missing == ["kernel.no_such_setting"]
    assert [c.path for c in plan.files] == [os.path.join(host, SYSCTL_FILE.lstrip("/"))]
    assert "no_such_setting" not in plan.files[0].after
    assert not os.path.exists(os.path.join(host, SYSCTL_FILE.lstrip("/")))

    core.apply(plan)
    assert read(host, "proc/sys/kernel/kptr_restrict") == "2\n"
    assert read(host, SYSCTL_FILE.lstrip("/")).splitlines()[1:] == [
        "kernel.kptr_restrict = 2", "kernel.yama.ptrace_scope = 1",
        "net.ipv4.conf.eth0/100.rp_filter = 1", "net.ipv4.ip_local_port_range = 32768 60999"]
    again = core.plan(host, "test", sysctl=wanted, sysctl_file=SYSCTL_FILE)
    assert not again.changed and again.files == [] and again.live == []


def test_diff_shows_each_file_and_the_running_kernel(host):
    plan = core.plan(host, "test", sysctl={"kernel.kptr_restrict": 2}, sysctl_file=SYSCTL_FILE)
    diffs = core.diff(plan)
    assert diffs[0]["before"] == "" and diffs[0]["after_header"] == SYSCTL_FILE
    assert diffs[1] == {"before": "kernel.kptr_restrict = 0\n", "after": "kernel.kptr_restrict = 2\n",
                        "before_header": "running kernel (/proc/sys)",
                        "after_header": "running kernel (/proc/sys)"}


def test_a_later_drop_in_that_undoes_a_setting_at_boot_is_reported(host):
    put(host, "usr/lib/sysctl.d/50-default.conf", "kernel.kptr_restrict = 1\n")   # read before ours
    put(host, "etc/sysctl.d/zz-local.conf", "kernel.kptr_restrict = 0\nkernel.sysrq = 1\n")
    put(host, "etc/sysctl.conf", "kernel.yama.ptrace_scope = 0\n")
    plan = core.plan(host, "test", sysctl={"kernel.kptr_restrict": 2, "kernel.yama.ptrace_scope": 1},
                     sysctl_file=SYSCTL_FILE)
    assert plan.overridden == [
        {"name": "kernel.kptr_restrict", "file": "/etc/sysctl.d/zz-local.conf", "value": "0"},
        {"name": "kernel.yama.ptrace_scope", "file": "/etc/sysctl.conf", "value": "0"}]
    assert "the next boot undoes it" in core.warnings(plan)[0]


def test_debian_drop_ins_sort_before_the_role_file_and_sysctl_conf_counts_once(host):
    # Debian 12: /usr/lib/sysctl.d/99-protect-links.conf, /etc/sysctl.d/99-sysctl.conf -> ../sysctl.conf
    put(host, "usr/lib/sysctl.d/99-protect-links.conf", "fs.protected_fifos = 1\n")
    put(host, "etc/sysctl.conf", "kernel.kptr_restrict = 1\n")
    os.makedirs(os.path.join(host, "etc/sysctl.d"))
    os.symlink("../sysctl.conf", os.path.join(host, "etc/sysctl.d/99-sysctl.conf"))
    plan = core.plan(host, "test", sysctl={"fs.protected_fifos": 2, "kernel.kptr_restrict": 2},
                     sysctl_file=SYSCTL_FILE)
    # systemd-sysctl reads both before the role's file, and /etc/sysctl.conf only through the link
    assert plan.overridden == []
    os.unlink(os.path.join(host, "etc/sysctl.d/99-sysctl.conf"))
    plan = core.plan(host, "test", sysctl={"kernel.kptr_restrict": 2}, sysctl_file=SYSCTL_FILE)
    assert plan.overridden == [{"name": "kernel.kptr_restrict", "file": "/etc/sysctl.conf", "value": "1"}]


def test_a_drop_in_of_the_same_name_in_etc_hides_the_one_in_usr_lib(host):
    put(host, "usr/lib/sysctl.d/zz-vendor.conf", "kernel.kptr_restrict = 0\n")
    put(host, "etc/sysctl.d/zz-vendor.conf", "kernel.kptr_restrict = 2\n")
    plan = core.plan(host, "test", sysctl={"kernel.kptr_restrict": 2}, sysctl_file=SYSCTL_FILE)
    assert plan.overridden == []


def test_blacklist_and_options_in_one_modprobe_file(host):
    plan = core.plan(host, "test", blacklist=["usb-storage", "dccp"], options={"kvm_intel": {"nested": 0}},
                     modprobe_file=MODPROBE_FILE)
    assert plan.loaded == ["usb-storage"]
    assert [dict((k, i[k]) for k in ("module", "parameter", "running", "configured", "users"))
            for i in plan.reload_required] == [
        {"module": "kvm_intel", "parameter": "nested", "running": "Y", "configured": "0", "users": 0}]
    assert plan.live == []
    core.apply(plan)
    assert read(host, MODPROBE_FILE.lstrip("/")).splitlines()[1:] == [
        "blacklist dccp", "install dccp /bin/false", "blacklist usb-storage", "install usb-storage /bin/false",
        "options kvm_intel nested=0"]
    warnings = " ".join(core.warnings(plan))
    assert "loaded now, kept from loading from the next boot on: usb-storage" in warnings
    assert "kvm_intel runs with nested=Y; 0 takes effect when the module is reloaded" in warnings


def test_a_parameter_that_already_runs_as_configured_needs_no_reload(host):
    plan = core.plan(host, "test", options={"kvm_intel": {"nested": 1}, "kvm_amd": {"nested": 0}},
                     modprobe_file=MODPROBE_FILE)
    assert plan.reload_required == []   # Y is 1; kvm_amd is not loaded


@pytest.mark.parametrize("kwargs, message", [
    ({"sysctl": {"Kernel Pointers": 1}}, "sysctl: 'Kernel Pointers' is not a sysctl name"),
    ({"sysctl": {"kernel.sysrq": None}}, "sysctl: kernel.sysrq needs a value on one line"),
    ({"sysctl": {"kernel.sysrq": "0\n1"}}, "sysctl: kernel.sysrq needs a value on one line"),
    ({"blacklist": ["usb storage"]}, "blacklist: 'usb storage' is not a kernel module name"),
    ({"options": {"kvm_intel": "nested=0"}}, "options: kvm_intel needs a dict of parameter: value"),
    ({"options": {"kvm_intel": {"nest ed": 0}}}, "options: kvm_intel: 'nest ed'=0 is not a module parameter"),
    ({"blacklist": ["usb-storage"], "options": {"usb_storage": {"delay_use": 1}}},
     "blacklist and options both name usb_storage"),
    ({"sysctl": {"kernel.sysrq": [0, 1]}}, "sysctl: kernel.sysrq needs a value on one line, a number or text (got [0, 1])"),
    ({"sysctl": {"kernel.sysrq": True}}, "sysctl: kernel.sysrq needs a value on one line, a number or text (got True)"),
    ({"options": {"kvm_intel": {"nested": "0 x=1"}}}, "options: kvm_intel: nested='0 x=1' has a space: modprobe would"),
    ({"options": {"kvm_intel": {"nested": [0]}}}, "options: kvm_intel: 'nested'=[0] is not a module parameter"),
])
def test_bad_input_is_refused_before_the_host_is_read(host, kwargs, message):
    with pytest.raises(core.KernelError) as error:
        core.plan(host, "test", sysctl_file=SYSCTL_FILE, modprobe_file=MODPROBE_FILE, **kwargs)
    assert message in str(error.value)


def test_a_value_the_kernel_refuses_puts_everything_back(host, monkeypatch):
    put(host, SYSCTL_FILE.lstrip("/"), "# the operator's old file\n")
    plan = core.plan(host, "test", sysctl={"kernel.kptr_restrict": 2, "kernel.yama.ptrace_scope": 3},
                     sysctl_file=SYSCTL_FILE)
    real_open = open

    def refusing_open(path, mode="r", *args, **kwargs):
        # as the kernel does: writing a value it refuses fails with EINVAL
        if path.endswith("ptrace_scope") and "w" in mode:
            raise OSError(22, "Invalid argument", path)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refusing_open)
    with pytest.raises(core.KernelError) as error:
        core.apply(plan)
    monkeypatch.undo()
    assert "ptrace_scope: Invalid argument; everything written in this run was put back" in str(error.value)
    assert read(host, "proc/sys/kernel/kptr_restrict") == "0\n"
    assert read(host, SYSCTL_FILE.lstrip("/")) == "# the operator's old file\n"


def test_a_value_the_kernel_does_not_keep_is_an_error(host, monkeypatch):
    plan = core.plan(host, "test", sysctl={"kernel.kptr_restrict": 2}, sysctl_file=SYSCTL_FILE)
    real_read = core._read

    def clamping_read(path):
        # as a kernel that clamps a value to its range: the write succeeds, the read gives 1
        return "1\n" if path.endswith("kptr_restrict") else real_read(path)

    monkeypatch.setattr(core, "_read", clamping_read)
    with pytest.raises(core.KernelError) as error:
        core.apply(plan)
    assert ("kernel.kptr_restrict reads '1' after the run wrote '2': the kernel did not keep it; "
            "everything written in this run was put back") in str(error.value)
    assert not os.path.exists(os.path.join(host, SYSCTL_FILE.lstrip("/")))


def test_forwarding_is_written_first_and_one_way_settings_last(host):
    for name in ("ip_forward", "conf/all/accept_redirects"):
        put(host, "proc/sys/net/ipv4/" + name, "1\n")
    put(host, "proc/sys/kernel/kexec_load_disabled", "0\n")
    plan = core.plan(host, "test", sysctl={"kernel.kexec_load_disabled": 1, "net.ipv4.conf.all.accept_redirects": 0,
                                           "net.ipv4.ip_forward": 0, "kernel.kptr_restrict": 2},
                     sysctl_file=SYSCTL_FILE)
    assert [c["name"] for c in plan.live] == [
        "net.ipv4.ip_forward", "kernel.kptr_restrict", "net.ipv4.conf.all.accept_redirects",
        "kernel.kexec_load_disabled"]


def test_every_wanted_value_is_read_back_after_the_run(host, monkeypatch):
    # the kernel resets all.accept_redirects when forwarding changes; a value written before the
    # switch would be lost without an error, so the run reads every value back at the end
    put(host, "proc/sys/net/ipv4/conf/all/accept_redirects", "0\n")
    put(host, "proc/sys/net/ipv4/ip_forward", "1\n")
    plan = core.plan(host, "test", sysctl={"net.ipv4.conf.all.accept_redirects": 0, "net.ipv4.ip_forward": 0},
                     sysctl_file=SYSCTL_FILE)
    assert [c["name"] for c in plan.live] == ["net.ipv4.ip_forward"]
    real_read = core._read
    monkeypatch.setattr(core, "_read", lambda path: "1\n" if path.endswith("all/accept_redirects")
                        else real_read(path))
    with pytest.raises(core.KernelError) as error:
        core.apply(plan)
    assert "net.ipv4.conf.all.accept_redirects reads '1' after the run wrote '0'" in str(error.value)
    monkeypatch.undo()
    assert read(host, "proc/sys/net/ipv4/ip_forward") == "1\n"


def test_a_one_way_setting_that_cannot_be_put_back_is_named(host, monkeypatch):
    put(host, "proc/sys/kernel/kexec_load_disabled", "0\n")
    plan = core.plan(host, "test", sysctl={"kernel.kexec_load_disabled": 1}, sysctl_file=SYSCTL_FILE)
    real_open, writes = open, []

    def one_way_open(path, mode="r", *args, **kwargs):
        if path.endswith("kexec_load_disabled") and "w" in mode:
            writes.append(path)
            if len(writes) > 1:   # as the kernel: once 1, EPERM until the next boot
                raise OSError(1, "Operation not permitted", path)
        return real_open(path, mode, *args, **kwargs)

    real_read = core._read
    monkeypatch.setattr("builtins.open", one_way_open)
    monkeypatch.setattr(core, "_read", lambda path: "2\n" if path.endswith("kexec_load_disabled") and writes
                        else real_read(path))
    with pytest.raises(core.KernelError) as error:
        core.apply(plan)
    monkeypatch.undo()
    assert ("put back what this run wrote except kernel.kexec_load_disabled, which the kernel lets go back "
            "only at the next boot") in str(error.value)


def test_an_unused_module_is_reloaded_only_when_allowed(host):
    calls = []

    def run(argv, data=None):
        calls.append(argv)
        if argv == ["modprobe", "kvm_intel"]:   # the reload reads the new options
            put(host, "sys/module/kvm_intel/parameters/nested", "N\n")
        return 0, "", ""

    options = {"kvm_intel": {"nested": 0}}
    reported = core.plan(host, "test", options=options, modprobe_file=MODPROBE_FILE)
    assert reported.reloads == [] and len(reported.reload_required) == 1
    plan = core.plan(host, "test", options=options, modprobe_file=MODPROBE_FILE, reload_modules=True)
    assert plan.reload_required == [] and [i["module"] for i in plan.reloads] == ["kvm_intel"]
    assert plan.changed
    core.apply(plan, run)
    assert calls == [["modprobe", "-r", "kvm_intel"], ["modprobe", "kvm_intel"]]
    again = core.plan(host, "test", options=options, modprobe_file=MODPROBE_FILE, reload_modules=True)
    assert not again.changed


def test_a_module_in_use_is_not_reloaded(host):
    put(host, "proc/modules", "kvm_intel 405504 3 - Live 0x0\n")
    plan = core.plan(host, "test", options={"kvm_intel": {"nested": 0}}, modprobe_file=MODPROBE_FILE,
                     reload_modules=True)
    assert plan.reloads == [] and plan.reload_required[0]["users"] == 3
    assert "reloaded (3 users now)" in " ".join(core.warnings(plan))


def test_a_module_that_comes_back_with_its_old_options_is_an_error(host):
    plan = core.plan(host, "test", options={"kvm_intel": {"nested": 0}}, modprobe_file=MODPROBE_FILE,
                     reload_modules=True)
    with pytest.raises(core.KernelError) as error:
        core.apply(plan, lambda argv, data=None: (0, "", ""))
    assert "kvm_intel runs with nested=Y after its reload, not 0" in str(error.value)
    assert not os.path.exists(os.path.join(host, MODPROBE_FILE.lstrip("/")))


def test_the_sysctl_file_must_be_a_conf_file(host):
    with pytest.raises(core.KernelError) as error:
        core.plan(host, "test", sysctl={"kernel.sysrq": 0}, sysctl_file="/etc/sysctl.d/kvmsec")
    assert "sysctl_file: /etc/sysctl.d/kvmsec must end in .conf" in str(error.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"sysctl_file": "sysctl.d/90-kvmsec.conf"}, "sysctl_file: sysctl.d/90-kvmsec.conf must end in .conf"),
    ({"sysctl_file": "/etc/sysctl.d/90 kvmsec.conf"}, "and be an absolute path without spaces"),
    ({"modprobe_file": "kvmsec.conf"}, "modprobe_file: kvmsec.conf must end in .conf (modprobe reads nothing else) and be"),
    ({"modprobe_file": "/etc/modprobe.d/kvmsec"}, "modprobe_file: /etc/modprobe.d/kvmsec must end in .conf"),
])
def test_the_files_must_be_absolute_conf_paths(host, kwargs, message):
    files = dict({"sysctl_file": SYSCTL_FILE, "modprobe_file": MODPROBE_FILE}, **kwargs)
    with pytest.raises(core.KernelError) as error:
        core.plan(host, "test", sysctl={"kernel.sysrq": 0}, blacklist=["dccp"], **files)
    assert message in str(error.value)
    assert not os.path.exists(os.path.join(host, SYSCTL_FILE.lstrip("/")))


def test_a_read_only_sysctl_is_refused_so_check_mode_never_predicts_what_cannot_be_set(host):
    path = os.path.join(host, "proc/sys/fs/dentry-state")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write("0\t0\t45\t0\t0\t0\n")
    os.chmod(path, 0o444)
    with pytest.raises(core.KernelError) as error:
        core.plan(host, "test", sysctl={"fs.dentry-state": 1}, sysctl_file=SYSCTL_FILE)
    assert "sysctl: fs.dentry-state is read-only in this kernel (/proc/sys/fs/dentry-state)" in str(error.value)


def test_decide_predicts_in_check_mode_and_the_run_does_what_it_predicted(host):
    def decide():
        return core.decide(lambda argv, data=None: (0, "", ""), "kernel_settings",
                           {"kernel.kptr_restrict": 2, "kernel.no_such_setting": 1}, SYSCTL_FILE, ["dccp"], {},
                           MODPROBE_FILE, False, root=host)

    predicted, warnings = returned(decide, check_mode=True)
    assert predicted["changed"] and read(host, "proc/sys/kernel/kptr_restrict") == "0\n"
    assert predicted["live"] == [{"name": "kernel.kptr_restrict", "before": "0", "after": "2"}]
    assert predicted["missing"] == ["kernel.no_such_setting"]
    assert "not in this kernel, left out: kernel.no_such_setting" in warnings
    headers = [diff["before_header"] for diff in predicted["diff"]]
    assert headers == [SYSCTL_FILE, MODPROBE_FILE, "running kernel (/proc/sys)"]
    done, _warnings = returned(decide)
    assert done["files"] == predicted["files"] and read(host, "proc/sys/kernel/kptr_restrict") == "2\n"
    again, _warnings = returned(decide)
    assert not again["changed"] and again["live"] == [] and again["files"] == []
