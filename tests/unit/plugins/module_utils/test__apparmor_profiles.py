"""The apparmor_profiles core over a temporary root holding Debian 12's libvirt profiles' headers.

The kernel's list of loaded profiles is a plain file here and apparmor_parser a table-driven
fake: this development machine runs no AppArmor. The apparmor lab host runs the module for real
(Molecule's apparmor scenario: prepare puts libvirtd's profile in complain mode, converge puts
it back, verify reads the kernel's mode).
"""

import os

import pytest

from ansible_collections.kvmsec.hardening.plugins.module_utils import _apparmor_profiles as core
from ansible_collections.kvmsec.hardening.tests.unit.plugins.module_utils.host_tree import put, read
from ansible_collections.kvmsec.hardening.tests.unit.plugins.module_utils.module_stub import returned

LIBVIRTD = ("#include <tunables/global>\n\nprofile libvirtd /usr/sbin/libvirtd flags=(attach_disconnected) {\n"
            "  #include <abstractions/base>\n  profile qemu_bridge_helper {\n  }\n"
            "  #include <local/usr.sbin.libvirtd>\n}\n")
HELPER = ("#include <tunables/global>\n\nprofile virt-aa-helper /usr/lib/libvirt/virt-aa-helper {\n"
          "  /var/lib/libvirt/images/** r,\n  #include <local/usr.lib.libvirt.virt-aa-helper>\n}\n")
LOADED = "libvirtd (enforce)\nlibvirtd//qemu_bridge_helper (enforce)\nvirt-aa-helper (enforce)\n"
ENFORCE = ["usr.lib.libvirt.virt-aa-helper", "usr.sbin.libvirtd"]


class Parser(object):
    def __init__(self, fail=()):
        self.fail = fail
        self.calls = []

    def __call__(self, argv, data=None):
        self.calls.append(argv[-1])
        if os.path.basename(argv[-1]) in self.fail:
            return 1, "", "AppArmor parser error at line 3: syntax error\n"
        return 0, "", ""


@pytest.fixture
def root(tmp_path):
    root = str(tmp_path)
    put(root, "etc/apparmor.d/usr.sbin.libvirtd", LIBVIRTD)
    put(root, "etc/apparmor.d/usr.lib.libvirt.virt-aa-helper", HELPER)
    put(root, "sys/kernel/security/apparmor/profiles", LOADED)
    return root


def test_enforced_profiles_without_local_rules_change_nothing(root):
    plan = core.plan(root, ENFORCE, {})
    assert not core.changed(plan) and plan.profiles == [] and plan.missing == []


def test_complain_by_flag_and_by_link_are_undone_and_the_profile_loaded_again(root):
    put(root, "etc/apparmor.d/usr.sbin.libvirtd",
        LIBVIRTD.replace("flags=(attach_disconnected)", "flags=(attach_disconnected, complain)"))
    os.makedirs(os.path.join(root, "etc/apparmor.d/disable"))
    os.symlink("../usr.lib.libvirt.virt-aa-helper", os.path.join(root, "etc/apparmor.d/disable/usr.lib.libvirt.virt-aa-helper"))
    put(root, "sys/kernel/security/apparmor/profiles", "libvirtd (complain)\n")
    plan = core.plan(root, ENFORCE, {})
    assert [(p["name"], p["mode"], p["changes"]) for p in plan.profiles] == [
        ("virt-aa-helper", "not loaded", ["disable link removed", "reloaded"]),
        ("libvirtd", "complain", ["complain flag removed", "reloaded"])]
    before_after = core.diff(plan, root)
    assert "flags=(attach_disconnected) {" in before_after[0]["after"]
    assert before_after[-1]["before"].startswith("virt-aa-helper (not loaded)\nlibvirtd (complain)\n")
    assert read(root, "etc/apparmor.d/usr.sbin.libvirtd").count("complain") == 1   # plan writes nothing

    parser = Parser()
    core.apply(plan, parser)
    assert "complain" not in read(root, "etc/apparmor.d/usr.sbin.libvirtd")
    assert not os.path.lexists(os.path.join(root, "etc/apparmor.d/disable/usr.lib.libvirt.virt-aa-helper"))
    assert [os.path.basename(p) for p in parser.calls] == ENFORCE


def test_a_lone_complain_flag_leaves_no_empty_flags():
    name, text = core.without_complain("/usr/bin/x flags=(complain) {\n}\n")
    assert name == "/usr/bin/x" and text == "/usr/bin/x {\n}\n"


def test_image_directories_go_into_the_helpers_local_file_in_one_block_kept_by_later_runs(root):
    local = "etc/apparmor.d/local/usr.lib.libvirt.virt-aa-helper"
    put(root, local, "# site rule\n/opt/iso/** r,\n")
    rules = {"usr.lib.libvirt.virt-aa-helper": core.read_directories(["/srv/vms/", "/data/images"], "d")}
    plan = core.plan(root, [], rules)
    assert plan.profiles[0]["changes"] == ["local rules", "reloaded"]
    core.apply(plan, Parser())
    text = read(root, local)
    assert text.startswith("# site rule\n/opt/iso/** r,\n" + core.BEGIN + "\n")
    assert "  /srv/vms/ r,\n  /srv/vms/** r,\n  /data/images/ r,\n  /data/images/** r,\n" + core.END in text
    assert not core.changed(core.plan(root, [], rules))

    emptied = core.plan(root, [], {"usr.lib.libvirt.virt-aa-helper": []})
    core.apply(emptied, Parser())
    assert read(root, local) == "# site rule\n/opt/iso/** r,\n"


def test_a_profile_that_does_not_load_puts_every_file_and_link_back(root):
    put(root, "etc/apparmor.d/usr.sbin.libvirtd", LIBVIRTD.replace("(attach_disconnected)", "(complain)"))
    os.makedirs(os.path.join(root, "etc/apparmor.d/force-complain"))
    link = os.path.join(root, "etc/apparmor.d/force-complain/usr.sbin.libvirtd")
    os.symlink("../usr.sbin.libvirtd", link)
    rules = {"usr.lib.libvirt.virt-aa-helper": ["/srv/vms/** r,"]}
    plan = core.plan(root, ENFORCE, rules)
    with pytest.raises(core.AppArmorError, match="apparmor_parser failed .exit 1.: AppArmor parser error.*are back as they were"):
        core.apply(plan, Parser(fail=("usr.sbin.libvirtd",)))
    assert "(complain)" in read(root, "etc/apparmor.d/usr.sbin.libvirtd")
    assert os.readlink(link) == "../usr.sbin.libvirtd"
    assert not os.path.exists(os.path.join(root, "etc/apparmor.d/local/usr.lib.libvirt.virt-aa-helper"))


def test_missing_profiles_are_listed_and_a_host_without_apparmor_is_refused(root):
    assert core.plan(root, ["usr.sbin.virtqemud"], {}).missing == ["usr.sbin.virtqemud"]
    os.unlink(os.path.join(root, "sys/kernel/security/apparmor/profiles"))
    with pytest.raises(core.AppArmorError, match="AppArmor is not enabled on this host"):
        core.plan(root, ENFORCE, {})


@pytest.mark.parametrize("call, message", [
    (lambda: core.read_directories(["srv/vms"], "read_directories"), r"read_directories\[0\]: 'srv/vms' is not an absolute"),
    (lambda: core.read_directories(["/srv/v ms"], "read_directories"), "without spaces, commas"),
    (lambda: core.read_directories(["/srv/*"], "read_directories"), "AppArmor glob characters"),
    (lambda: core.check_local_rules({"../x": []}), "'../x' is not a profile file name"),
    (lambda: core.check_local_rules({"usr.sbin.libvirtd": "/x r,"}), "give a list of rules"),
    (lambda: core.check_local_rules({"usr.sbin.libvirtd": ["/x r"]}), "not one AppArmor rule ending in a comma"),
])
def test_bad_input_names_the_option(call, message):
    with pytest.raises(core.AppArmorError, match=message):
        call()


def test_decide_predicts_in_check_mode_and_the_run_does_what_it_predicted(root):
    parser = Parser()

    def decide():
        return core.decide(parser, ENFORCE, {}, ["/srv/vms"], ["usr.lib.libvirt.virt-aa-helper"], root=root)

    predicted, _warnings = returned(decide, check_mode=True)
    assert predicted["changed"] and parser.calls == []
    assert [profile["changes"] for profile in predicted["profiles"]] == [["local rules", "reloaded"]]
    assert not os.path.exists(os.path.join(root, "etc/apparmor.d/local/usr.lib.libvirt.virt-aa-helper"))
    done, _warnings = returned(decide)
    assert done["profiles"] == predicted["profiles"]
    assert "/srv/vms/** r," in read(root, "etc/apparmor.d/local/usr.lib.libvirt.virt-aa-helper")
    again, _warnings = returned(decide)
    assert not again["changed"] and again["missing"] == []
