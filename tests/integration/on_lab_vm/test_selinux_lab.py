"""selinux_module on the real SELinux-enforcing lab host.

One VM for the whole file (conftest's selinux_vm, which test_svirt_lab goes on using), and the
tests run in file order building on each other: a policy transaction costs 30-60 s in the
emulated host, so each test does one transaction's worth of work and the next test starts from
where it left off. Proof comes from the VM itself:
``semodule --list-modules=full --checksum`` for what is installed, and the policy store's
commit counter (``/var/lib/selinux/default/active/commit_num``, which libsemanage increments
once per committed transaction) together with the modification time of ``policy.kern`` for how
many transactions ran.
"""

import json
import pytest

STORE = "/var/lib/selinux/default/active"
STATE_DIR = "/var/lib/kvmsec/selinux_modules"
SRC = "/root/kvmsec-src"
GUEST = "kvmsec-sel"
GUEST_XML = """<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator><video><model type='none'/></video>
<memballoon model='none'/></devices></domain>
""" % GUEST

TA_V1 = """module kvmsec_ta 1.0;
require { type virtd_t; class capability2 perfmon; }
allow virtd_t self:capability2 perfmon;
"""
TA_V2 = """module kvmsec_ta 2.0;
require { type virtd_t; class capability2 { perfmon wake_alarm }; }
allow virtd_t self:capability2 { perfmon wake_alarm };
"""
TA_FC = "/srv/kvmsec-ta(/.*)?    system_u:object_r:virt_image_t:s0\n"
TB_CIL = "(allow virtd_t self (capability2 (syslog)))\n"
TC_TE = """module kvmsec_tc 1.0;
require { type virtd_t; class capability2 block_suspend; }
allow virtd_t self:capability2 block_suspend;
"""
TD_TE = """module kvmsec_td 1.0;
require { type virtd_t; class capability2 audit_read; }
allow virtd_t self:capability2 audit_read;
"""
# compiles (requires are resolved only when linking against the policy), fails in semodule
TE_UNRESOLVED = """module kvmsec_te 1.0;
require { type kvmsec_no_such_t; class file read; }
allow kvmsec_no_such_t self:file read;
"""
TF_SYNTAX = "module kvmsec_tf 1.0;\nrequire { type virtd_t; }\nallow virtd_t self:file read\n"

BATCH = {"modules": [
    {"name": "kvmsec_ta", "content": TA_V1, "fc_content": TA_FC},
    {"name": "kvmsec_tb", "src": SRC + "/kvmsec_tb.cil"},
    {"name": "kvmsec_tc", "src": SRC + "/kvmsec_tc.pp"},
]}
SHAS = {}


@pytest.fixture(scope="module")
def vm(selinux_vm):
    machine = selinux_vm
    machine.put(TB_CIL, SRC + "/kvmsec_tb.cil")
    machine.put(TC_TE, SRC + "/kvmsec_tc.te")
    machine.put(GUEST_XML, SRC + "/guest.xml")
    # a prebuilt .pp, made the usual way on the host itself
    machine.ssh("cd %s && checkmodule -M -m -o kvmsec_tc.mod kvmsec_tc.te && "
                "semodule_package -o kvmsec_tc.pp -m kvmsec_tc.mod" % SRC)
    machine.ssh("virsh define %s/guest.xml" % SRC)
    yield machine
    # test_svirt_lab goes on with this VM and counts every domain it has
    machine.ssh("virsh undefine %s" % GUEST)


def store_state(vm):
    """(commit number, policy.kern mtime): both move with every committed transaction."""
    out = vm.ssh("od -An -tu4 -N4 %s/commit_num; stat -c %%y %s/policy.kern" % (STORE, STORE)).stdout
    commit, mtime = out.strip().split("\n")
    return int(commit), mtime


def listed(vm):
    """{name: (priority, format, enabled, sha256)} of the kvmsec_* modules, from semodule."""
    modules = {}
    for line in vm.ssh("semodule --list-modules=full --checksum").stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1].startswith("kvmsec_"):
            modules[fields[1]] = (int(fields[0]), fields[2], "disabled" not in fields,
                                  fields[-1].split(":", 1)[1])
    return modules


def by_name(result):
    assert not result.get("failed"), result
    return dict((m["name"], m) for m in result["modules"])


def test_check_mode_compiles_and_predicts_without_touching_the_store(vm):
    before = store_state(vm)
    result, output = vm.module("selinux_module", BATCH, check=True, diff=True)
    modules = by_name(result)
    assert result["changed"] is True and result["transaction"] is False
    assert result["semodule_command"] is None
    assert [modules[n]["actions"] for n in ("kvmsec_ta", "kvmsec_tb", "kvmsec_tc")] == [["install"]] * 3
    assert store_state(vm) == before
    assert listed(vm) == {}
    assert vm.ssh("test -e %s" % STATE_DIR, check=False).returncode != 0
    assert "+400 kvmsec_ta pp sha256:%s" % modules["kvmsec_ta"]["sha256"] in output


def test_batch_installs_in_one_transaction(vm):
    commit, dummy = store_state(vm)
    result, dummy = vm.module("selinux_module", BATCH)
    modules = by_name(result)
    assert result["changed"] is True
    assert result["transaction"] is True
    assert result["semodule_command"][:3] == ["/usr/sbin/semodule", "-X", "400"]
    assert result["semodule_command"].count("-i") == 3
    assert store_state(vm)[0] == commit + 1
    installed = listed(vm)
    for name, fmt in (("kvmsec_ta", "pp"), ("kvmsec_tb", "cil"), ("kvmsec_tc", "pp")):
        SHAS[name] = modules[name]["sha256"]
        assert installed[name] == (400, fmt, True, SHAS[name])
        assert modules[name]["versions"][0]["current"] is True
    # the .fc went in with the module
    assert "virt_image_t" in vm.ssh("matchpathcon /srv/kvmsec-ta/disk.qcow2").stdout
    kept = vm.ssh("ls %s/kvmsec_ta/%s" % (STATE_DIR, SHAS["kvmsec_ta"])).stdout.split()
    assert kept == ["kvmsec_ta.fc", "kvmsec_ta.pp", "kvmsec_ta.te"]


def test_second_run_is_idempotent_without_a_transaction(vm):
    before = store_state(vm)
    result, dummy = vm.module("selinux_module", BATCH)
    assert result["changed"] is False and result["transaction"] is False, result
    assert result["semodule_command"] is None
    assert store_state(vm) == before


def test_upgrade_disable_and_remove_in_one_transaction(vm):
    commit, dummy = store_state(vm)
    result, dummy = vm.module("selinux_module", {"modules": [
        {"name": "kvmsec_ta", "content": TA_V2},
        {"name": "kvmsec_tb", "state": "disabled"},
        {"name": "kvmsec_tc", "state": "absent"},
    ]})
    modules = by_name(result)
    assert [modules[n]["actions"] for n in ("kvmsec_ta", "kvmsec_tb", "kvmsec_tc")] == [
        ["upgrade"], ["disable"], ["remove"]]
    assert store_state(vm)[0] == commit + 1
    installed = listed(vm)
    SHAS["kvmsec_ta_v2"] = modules["kvmsec_ta"]["sha256"]
    assert SHAS["kvmsec_ta_v2"] != SHAS["kvmsec_ta"]
    assert installed["kvmsec_ta"][3] == SHAS["kvmsec_ta_v2"]
    assert installed["kvmsec_tb"][2] is False
    assert "kvmsec_tc" not in installed
    versions = modules["kvmsec_ta"]["versions"]
    assert [(v["sha256"], v["current"], v["rollback_target"]) for v in versions] == [
        (SHAS["kvmsec_ta"], False, True), (SHAS["kvmsec_ta_v2"], True, False)]


def test_rollback_and_enable_in_one_transaction(vm):
    commit, dummy = store_state(vm)
    result, dummy = vm.module("selinux_module", {"modules": [
        {"name": "kvmsec_ta", "rollback": True},
        {"name": "kvmsec_tb", "state": "enabled"},
    ]})
    modules = by_name(result)
    assert modules["kvmsec_ta"]["actions"] == ["rollback"]
    assert modules["kvmsec_tb"]["actions"] == ["enable"]
    assert store_state(vm)[0] == commit + 1
    installed = listed(vm)
    assert installed["kvmsec_ta"][3] == SHAS["kvmsec_ta"]
    assert installed["kvmsec_tb"][2] is True


def test_a_broken_module_in_a_batch_installs_nothing(vm):
    before, modules_before = store_state(vm), listed(vm)
    result, dummy = vm.module("selinux_module", {"modules": [
        {"name": "kvmsec_td", "content": TD_TE},
        {"name": "kvmsec_te", "content": TE_UNRESOLVED},
        {"name": "kvmsec_ta", "state": "disabled"},
    ]})
    assert result.get("failed") is True
    assert "the policy transaction failed and changed nothing" in result["msg"]
    assert "kvmsec_no_such_t" in result["msg"] or "Failed" in result["msg"]
    assert store_state(vm) == before and listed(vm) == modules_before
    assert vm.ssh("test -e %s/kvmsec_td" % STATE_DIR, check=False).returncode != 0

    result, dummy = vm.module("selinux_module", {"modules": [
        {"name": "kvmsec_td", "content": TD_TE}, {"name": "kvmsec_tf", "content": TF_SYNTAX}]})
    assert result.get("failed") is True
    assert "module kvmsec_tf does not compile: checkmodule failed" in result["msg"]
    assert "syntax error" in result["msg"]
    assert store_state(vm) == before


def test_a_real_denial_becomes_a_module_and_the_action_succeeds(vm):
    start = vm.ssh("virsh start %s" % GUEST, check=False)
    assert start.returncode != 0, "the guest started before any fix: nothing to learn from"
    # permissive for one start: every access the start needs is logged, nothing is refused
    denials = vm.ssh(
        "D=$(date +%%x); T=$(date +%%H:%%M:%%S); setenforce 0; virsh start %s; virsh destroy %s; "
        "setenforce 1; ausearch --input-logs -m AVC,USER_AVC -ts $D $T" % (GUEST, GUEST)).stdout
    assert "denied" in denials and getenforce(vm) == "Enforcing"

    proposal, output = vm.module("selinux_module", {"name": "kvmsec_avc", "avc": denials},
                                 check=True, diff=True)
    generated = proposal["modules"][0]["generated"]
    assert "allow virtd_t device_t:filesystem unmount;" in generated
    assert "allow virtd_t systemd_machined_t:dbus send_msg;" in generated    # from a USER_AVC
    assert "allow virtd_t self:capability2 bpf;" in output                   # shown by --diff
    assert "kvmsec_avc" not in listed(vm)

    result, dummy = vm.module("selinux_module", {"name": "kvmsec_avc", "avc": denials})
    assert result["changed"] is True and result["modules"][0]["generated"] == generated
    assert listed(vm)["kvmsec_avc"][3] == result["modules"][0]["sha256"]

    vm.ssh("virsh start %s" % GUEST)
    try:
        assert "svirt_t" in vm.ssh("ps -eZ | grep qemu-system").stdout
    finally:
        vm.ssh("virsh destroy %s" % GUEST)


def getenforce(vm):
    return vm.ssh("getenforce").stdout.strip()


def test_state_dir_keeps_every_version_with_its_history(vm):
    index = json.loads(vm.ssh("cat %s/kvmsec_ta/index.json" % STATE_DIR).stdout)
    assert set(index["versions"]) == {SHAS["kvmsec_ta"], SHAS["kvmsec_ta_v2"]}
    assert index["history"] == [SHAS["kvmsec_ta"]]
    assert vm.ssh("stat -c %%a %s/kvmsec_ta" % STATE_DIR).stdout.strip() == "700"
