"""The audit_rules core over a temporary root, with a fake kernel behind augenrules and auditctl.

This development machine's container has no audit subsystem of its own (auditctl cannot reach
the kernel here), so the kernel is a list: ``augenrules --load`` loads the rules.d files into it
in auditctl's normalised form (``-k NAME`` printed as ``-F key=NAME`` for syscall rules). The
lab hosts run the module for real (Molecule: the pristine audit fails KVM-AUDIT-01, converge
loads the rules, verify finds a watch's record with ausearch, the drift audit finds a rule
removed with auditctl -W).
"""

import os

import pytest

from ansible_collections.kvmsec.hardening.plugins.module_utils import _audit_rules as core
from ansible_collections.kvmsec.hardening.tests.unit.plugins.module_utils.module_stub import returned

RULES = ["-w /etc/libvirt -p wa -k kvm-config",
         "-w /usr/libexec/qemu-kvm -p wa -k kvm-binaries",
         "-a always,exit -F arch=b64 -S init_module,finit_module -k kvm-modules"]
STATUS = "enabled 1\nfailure 1\npid 512\nrate_limit 0\n"


class Kernel(object):
    """augenrules and auditctl: the loaded rules, and a load that may fail."""

    def __init__(self, directory, enabled=1, fail=False):
        self.directory = directory
        self.loaded = []
        self.enabled = enabled
        self.fail = fail
        self.loads = 0

    def status(self):
        return "enabled %d\npid 512\n" % self.enabled

    def listing(self):
        return "".join(rule + "\n" for rule in self.loaded) or "No rules\n"

    def __call__(self, argv, data=None):
        assert argv == ["augenrules", "--load"]
        self.loads += 1
        if self.fail:
            return 1, "", "There was an error in line 3 of /etc/audit/audit.rules\n"
        self.loaded = []
        for name in sorted(os.listdir(self.directory)):
            with open(os.path.join(self.directory, name)) as handle:
                for line in handle.read().splitlines():
                    if line.startswith("-a"):
                        line = line.replace(" -k ", " -F key=")
                    if core.RULE_START.match(line):
                        self.loaded.append(line)
        return 0, "", ""


@pytest.fixture
def host(tmp_path):
    root = tmp_path / "root"
    (root / "etc/libvirt").mkdir(parents=True)
    rules_d = tmp_path / "rules.d"
    rules_d.mkdir()
    return str(root), str(rules_d)


def decide(host, kernel, rules=None, immutable=False):
    root, rules_d = host
    return core.plan(root, core.check_rules(rules or RULES), os.path.join(rules_d, "kvm.rules"),
                     os.path.join(rules_d, "99-kvmsec-immutable.rules"), immutable,
                     kernel.listing(), kernel.status())


def test_a_pristine_host_gets_the_file_and_the_kernel_its_rules(host):
    kernel = Kernel(host[1])
    plan = decide(host, kernel)
    assert core.changed(plan) and plan.load
    assert plan.skipped == ["-w /usr/libexec/qemu-kvm -p wa -k kvm-binaries"]
    assert plan.missing_keys == {"kvm-config": (1, 0), "kvm-modules": (1, 0)}
    core.apply(plan, kernel, kernel.listing)
    with open(os.path.join(host[1], "kvm.rules")) as handle:
        assert handle.read() == core.HEADER + RULES[0] + "\n" + RULES[2] + "\n"
    assert "-a always,exit -F arch=b64 -S init_module,finit_module -F key=kvm-modules" in kernel.loaded
    again = decide(host, kernel)
    assert not core.changed(again)


def test_a_rule_removed_from_the_kernel_by_hand_is_loaded_again(host):
    kernel = Kernel(host[1])
    core.apply(decide(host, kernel), kernel, kernel.listing)
    kernel.loaded.remove("-w /etc/libvirt -p wa -k kvm-config")
    plan = decide(host, kernel)
    assert not plan.files and plan.load and plan.missing_keys == {"kvm-config": (1, 0)}
    assert "kvm-config: 0 rules loaded" in core.diff(plan)[0]["before"]
    core.apply(plan, kernel, kernel.listing)
    assert not core.changed(decide(host, kernel))


def test_immutable_adds_the_lock_and_a_locked_kernel_reports_the_reboot(host):
    kernel = Kernel(host[1])
    core.apply(decide(host, kernel, immutable=True), kernel, kernel.listing)
    assert "-e 2" not in kernel.loaded  # the lock is a control rule: the fake does not list it
    with open(os.path.join(host[1], "99-kvmsec-immutable.rules")) as handle:
        assert handle.read().endswith("-e 2\n")
    kernel.enabled = 2
    assert not core.changed(decide(host, kernel, immutable=True))
    plan = decide(host, kernel, rules=RULES + ["-w /etc/libvirt -p r -k kvm-read"], immutable=True)
    assert plan.files and not plan.load and plan.reboot_required
    assert "next boot" in core.warnings(plan)[0]
    loads = kernel.loads
    core.apply(plan, kernel, kernel.listing)
    assert kernel.loads == loads


def test_turning_immutable_off_removes_its_file(host):
    kernel = Kernel(host[1])
    core.apply(decide(host, kernel, immutable=True), kernel, kernel.listing)
    plan = decide(host, kernel)
    assert [change.after for change in plan.files] == [None]
    core.apply(plan, kernel, kernel.listing)
    assert os.listdir(host[1]) == ["kvm.rules"]


def test_a_failed_load_puts_the_files_back(host):
    kernel = Kernel(host[1])
    core.apply(decide(host, kernel), kernel, kernel.listing)
    kernel.fail = True
    plan = decide(host, kernel, rules=RULES + ["-w /etc/libvirt -p x -k kvm-exec"])
    with pytest.raises(core.AuditRulesError, match="back as they were"):
        core.apply(plan, kernel, kernel.listing)
    with open(os.path.join(host[1], "kvm.rules")) as handle:
        assert "kvm-exec" not in handle.read()


def test_a_load_that_leaves_a_key_out_fails(host):
    kernel = Kernel(host[1])
    plan = decide(host, kernel)
    with pytest.raises(core.AuditRulesError, match="kvm-config"):
        core.apply(plan, lambda argv, data=None: (0, "", ""), lambda: "No rules\n")
    assert not os.path.exists(os.path.join(host[1], "kvm.rules"))


@pytest.mark.parametrize("rule, message", [
    ("-D", "starting with -w"),
    ("-e 2", "starting with -w"),
    ("-w /etc/libvirt -p wa", "has no key"),
    ("-w /etc/libvirt -p wa -k a\n-D", "starting with -w"),
])
def test_bad_rules_are_refused_naming_the_item(rule, message):
    with pytest.raises(core.AuditRulesError, match=r"rules\[1\].*" + message):
        core.check_rules([RULES[0], rule])


def test_without_auditd_nothing_is_planned(host):
    kernel = Kernel(host[1])
    root, rules_d = host
    with pytest.raises(core.AuditRulesError, match="auditd is not running"):
        core.plan(root, RULES, os.path.join(rules_d, "kvm.rules"), os.path.join(rules_d, "x.rules"),
                  False, "No rules\n", "enabled 1\npid 0\n")
    assert os.listdir(rules_d) == [] and kernel.loads == 0


def test_status_parses_auditctl_s():
    assert core.parse_status(STATUS) == {"enabled": 1, "pid": 512}


def test_watches_become_watch_rules_and_bad_ones_name_the_field():
    assert core.watch_rules([{"path": "/dev/kvm", "permissions": "wa", "key": "kvm-devices"}]) == [
        "-w /dev/kvm -p wa -k kvm-devices"]
    with pytest.raises(core.AuditRulesError, match=r"watches\[0\].permissions: 'rwz'"):
        core.watch_rules([{"path": "/dev/kvm", "permissions": "rwz", "key": "k"}])
    with pytest.raises(core.AuditRulesError, match=r"watches\[0\].path"):
        core.watch_rules([{"path": "dev/kvm", "permissions": "w", "key": "k"}])
    with pytest.raises(core.AuditRulesError, match=r"watches\[0\].key"):
        core.watch_rules([{"path": "/dev/kvm", "permissions": "w", "key": "a b"}])


def runner(kernel):
    """auditctl -l and -s answered by the fake kernel, augenrules --load loading into it."""
    def run(argv, data=None):
        if argv[0] == "auditctl":
            return 0, kernel.listing() if argv[1] == "-l" else kernel.status(), ""
        return kernel(argv, data)
    return run


def test_decide_predicts_in_check_mode_and_the_run_loads_what_it_predicted(host):
    root, rules_d = host
    kernel = Kernel(rules_d)
    watches = [{"path": "/etc/libvirt", "permissions": "wa", "key": "kvm-config"},
               {"path": "/usr/libexec/qemu-kvm", "permissions": "wa", "key": "kvm-binaries"}]

    def decide_():
        return core.decide(runner(kernel), watches, RULES[2:], os.path.join(rules_d, "kvm.rules"),
                           os.path.join(rules_d, "99-kvmsec-immutable.rules"), False, root=root)

    predicted, _warnings = returned(decide_, check_mode=True)
    assert predicted["changed"] and os.listdir(rules_d) == [] and kernel.loads == 0
    assert predicted["missing"] == ["-w /usr/libexec/qemu-kvm -p wa -k kvm-binaries"]
    assert predicted["unloaded_keys"] == {"kvm-config": {"wanted": 1, "loaded": 0},
                                          "kvm-modules": {"wanted": 1, "loaded": 0}}
    done, _warnings = returned(decide_)
    assert done["changed"] and kernel.loads == 1
    again, _warnings = returned(decide_)
    assert not again["changed"] and again["unloaded_keys"] == {} and kernel.loads == 1


@pytest.mark.parametrize("option, value", [("path", "kvm.rules"), ("path", "/etc/audit/rules.d/kvm.conf"),
                                           ("immutable_path", "/etc/audit/rules.d/99 lock.rules")])
def test_a_rules_file_path_augenrules_would_not_read_is_refused(host, option, value):
    paths = dict(path="/etc/audit/rules.d/kvm.rules", immutable_path="/etc/audit/rules.d/99-kvmsec-immutable.rules")
    paths[option] = value
    with pytest.raises(core.AuditRulesError, match="%s: %r must be an absolute path" % (option, value)):
        core.decide(runner(Kernel(host[1])), [], RULES, paths["path"], paths["immutable_path"], False, root=host[0])


def test_a_common_key_is_carried_by_every_rule_once_and_counted_in_the_kernel(host):
    """As a compliance check reads the rules: auditctl -l | grep VIRT lists every one of them."""
    root, rules_d = host
    kernel = Kernel(rules_d)
    rules = RULES + ["-w /etc/libvirt/qemu.conf -p wa -k kvm-config -k VIRT"]
    open(os.path.join(root, "etc/libvirt/qemu.conf"), "w").close()

    def decide_():
        return core.decide(runner(kernel), [], rules, os.path.join(rules_d, "kvm.rules"),
                           os.path.join(rules_d, "99-kvmsec-immutable.rules"), False, root=root, common_key="VIRT")

    predicted, _warnings = returned(decide_, check_mode=True)
    assert predicted["unloaded_keys"]["VIRT"] == {"wanted": 3, "loaded": 0}
    returned(decide_)
    assert [line for line in kernel.listing().splitlines() if "VIRT" in line] == [
        "-w /etc/libvirt -p wa -k kvm-config -k VIRT",
        "-a always,exit -F arch=b64 -S init_module,finit_module -F key=kvm-modules -F key=VIRT",
        "-w /etc/libvirt/qemu.conf -p wa -k kvm-config -k VIRT"]
    again, _warnings = returned(decide_)
    assert not again["changed"]
    # a rule loaded again by hand without the common key lacks it in the kernel
    kernel.loaded[0] = "-w /etc/libvirt -p wa -k kvm-config"
    drifted, _warnings = returned(decide_, check_mode=True)
    assert drifted["changed"] and drifted["unloaded_keys"] == {"VIRT": {"wanted": 3, "loaded": 2}}


def test_a_bad_common_key_is_refused_naming_the_option():
    with pytest.raises(core.AuditRulesError, match="common_key: 'VIRT TRAIL' is not a key"):
        core.with_common_key(RULES, "VIRT TRAIL")
