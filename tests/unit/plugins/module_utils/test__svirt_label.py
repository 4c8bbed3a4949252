"""Unit tests of the svirt_label core, without Ansible.

The fixtures are text captured in the SELinux and AppArmor lab VMs (docs/lab.md): domain XML
from ``virsh dumpxml`` (running and inactive), ``virsh capabilities``, ``/proc/PID/attr/current``
of a guest's QEMU process and a libvirt AppArmor ``.files`` list. This machine's libvirt offers
only the ``none`` and ``dac`` security models, so libvirt itself is replaced by the collection's
one fake libvirt (``fake_libvirt.py``); process files live in a tree under tmp_path.
Image labels are real ``security.selinux`` extended attributes on tmp files (root may set them
without SELinux in the kernel). The lab tier runs the same code against a real host.
"""

import json
import os
from pathlib import Path

import pytest

from ansible_collections.kvmsec.hardening.plugins.module_utils import _libvirt
from ansible_collections.kvmsec.hardening.plugins.module_utils import _svirt_label as core
from ansible_collections.kvmsec.hardening.tests.unit.plugins.module_utils.fake_libvirt import (
    FakeDomain,
    connection,
)
from ansible_collections.kvmsec.hardening.tests.unit.plugins.module_utils.module_stub import returned

FIXTURES = Path(__file__).resolve().parents[2] / "data" / "svirt_label"
UUID_A = "79c35b53-5239-4f31-92ab-1f8c92fa1984"
UUID_B = "11daf27a-738c-49df-94ef-9e544a72c61e"
DYNAMIC = "<seclabel type='dynamic' model='selinux' relabel='yes'/>"


def fixture(name):
    return (FIXTURES / name).read_text()


def static(cats, relabel="yes"):
    return ("<seclabel type='static' model='selinux' relabel='%s'><label>system_u:system_r:svirt_t:"
            "s0:%s</label></seclabel>" % (relabel, cats))


def config_xml(name, uuid, seclabel=""):
    """An inactive definition (captured), renamed, with the given domain <seclabel>."""
    text = fixture("inactive-static.xml").replace("sv-b", name).replace(UUID_B, uuid)
    start = text.index("  <seclabel")
    end = text.index("</seclabel>") + len("</seclabel>\n")
    return text[:start] + (seclabel + "\n" if seclabel else "") + text[end:]


def live_xml(name, uuid, cats, kind="dynamic"):
    """A running guest's XML (captured) with another name and category pair."""
    text = fixture("live-dynamic.xml").replace("sv-a", name).replace(UUID_A, uuid)
    return text.replace("c7,c860", cats).replace("type='dynamic' model='selinux'",
                                                 "type='%s' model='selinux'" % kind)


def uuid(n):
    return "00000000-0000-4000-8000-%012d" % n


def disks_of(xml_text):
    return core.image_disks(_libvirt.disks(xml_text), "selinux")


def domain(name, n, seclabel="", running=None, kind="dynamic"):
    live = live_xml(name, uuid(n), running, kind) if running else None
    item = core.Domain(FakeDomain(name, uuid(n), config_xml(name, uuid(n), seclabel), live))
    if running:
        item.pid = 1000 + n
        item.process_label = "system_u:system_r:svirt_t:s0:" + running
    return item


# ---------------------------------------------------------------- contexts and categories

@pytest.mark.parametrize("level, cats", [
    ("s0", set()),
    ("s0:c7,c860", {7, 860}),
    ("s0:c5", {5}),
    ("s0-s0:c0.c3", {0, 1, 2, 3}),
    ("s0:c1.c2,c9", {1, 2, 9}),
])
def test_level_categories(level, cats):
    assert core.level_categories(level) == frozenset(cats)


@pytest.mark.parametrize("level", ["s0:c1024", "s0:x1", "s0:c5.c2", "s0:c1,,c2"])
def test_bad_levels_are_refused(level):
    with pytest.raises(core.SvirtError):
        core.level_categories(level)


@pytest.mark.parametrize("text", ["c12,c345", "c345,c12", "s0:c12,c345",
                                  "system_u:system_r:svirt_t:s0:c12,c345",
                                  "system_u:object_r:svirt_image_t:s0:c345,c12"])
def test_every_way_of_writing_a_pair_is_the_same_pair(text):
    assert core.parse_categories(text) == frozenset({12, 345})
    assert core.category_text(core.parse_categories(text)) == "c12,c345"


@pytest.mark.parametrize("text", ["", "s0", "system_u:system_r:svirt_t:s0", "svirt_t:c1"])
def test_categories_must_name_a_category(text):
    with pytest.raises(core.SvirtError):
        core.parse_categories(text)


def test_with_categories_keeps_user_role_type_and_sensitivity():
    assert core.with_categories("system_u:system_r:svirt_tcg_t:s0", {9, 4}) == \
        "system_u:system_r:svirt_tcg_t:s0:c4,c9"
    assert core.with_categories("u:r:t:s0-s0:c0.c1023", {1, 2}) == "u:r:t:s0:c1,c2"


def test_process_labels_as_the_kernel_gives_them():
    # SELinux ends the label with a NUL, AppArmor with " (mode)" and a newline
    assert core.clean_label(fixture("proc-attr-current-selinux")) == \
        "system_u:system_r:svirt_t:s0:c7,c860"
    assert core.clean_label(b"system_u:object_r:svirt_image_t:s0:c1,c2\x00") == \
        "system_u:object_r:svirt_image_t:s0:c1,c2"
    assert core.apparmor_state(fixture("proc-attr-current-apparmor")) == \
        ("libvirt-a1a98ad1-4a14-43a8-aa3d-e6543d3614ab", "enforce")
    assert core.apparmor_state("libvirt-x (complain)\n") == ("libvirt-x", "complain")
    assert core.apparmor_state("unconfined\n") == (None, "unconfined")


# ---------------------------------------------------------------- domain XML

def test_seclabels_of_a_running_guest():
    labels = core.seclabels(fixture("live-dynamic.xml"))
    assert set(labels) == {"selinux", "dac"}
    assert labels["selinux"] == {
        "type": "dynamic", "model": "selinux", "relabel": True,
        "label": "system_u:system_r:svirt_t:s0:c7,c860",
        "imagelabel": "system_u:object_r:svirt_image_t:s0:c7,c860", "baselabel": None}


def test_seclabel_of_an_inactive_static_definition():
    label = core.seclabel_for(fixture("inactive-static.xml"), "selinux")
    assert (label["type"], label["relabel"], label["label"], label["imagelabel"]) == \
        ("static", True, "system_u:system_r:svirt_t:s0:c5,c6", None)


def test_relabel_defaults_follow_libvirt():
    text = config_xml("x", uuid(1), "<seclabel type='static' model='selinux'><label>a:b:c:s0:c1</label></seclabel>")
    assert core.seclabel_for(text, "selinux")["relabel"] is False
    assert core.seclabel_for(config_xml("x", uuid(1), "<seclabel model='selinux'/>"), "selinux")["relabel"] is True


def test_disks_and_per_disk_relabel_overrides():
    text = fixture("live-dynamic.xml").replace("</devices>", """
    <disk type='file' device='disk'><source file='/img/shared.raw'/><shareable/><target dev='vdb'/></disk>
    <disk type='file' device='cdrom'><target dev='sda'/><readonly/></disk>
    <disk type='block' device='disk'><source dev='/dev/sdz'><seclabel model='selinux' relabel='no'/>
      </source><target dev='vdc'/></disk>
  </devices>""")
    assert disks_of(text) == [
        {"target": "vda", "path": "/var/lib/libvirt/images/sv-a.qcow2", "readonly": False,
         "shareable": False, "relabel": True},
        {"target": "vdb", "path": "/img/shared.raw", "readonly": False, "shareable": True, "relabel": True},
        {"target": "vdc", "path": "/dev/sdz", "readonly": False, "shareable": False, "relabel": False},
    ]


def test_set_seclabel_replaces_only_its_model_and_keeps_the_rest():
    text = fixture("live-dynamic.xml")
    desired = {"type": "static", "model": "selinux", "relabel": True,
               "label": "system_u:system_r:svirt_t:s0:c1,c2"}
    new = core.set_seclabel(text, desired)
    labels = core.seclabels(new)
    assert labels["selinux"]["label"] == desired["label"] and labels["selinux"]["imagelabel"] is None
    assert labels["dac"]["label"] == "+64055:+64055"
    assert disks_of(new) == disks_of(text)
    assert "<name>sv-a</name>" in new


def test_set_seclabel_keeps_metadata_namespace_prefixes():
    text = config_xml("x", uuid(1)).replace(
        "</domain>", "<metadata><app:tenant xmlns:app='http://example.com/app'>a</app:tenant></metadata></domain>")
    new = core.set_seclabel(text, {"type": "dynamic", "model": "selinux", "relabel": True})
    assert "<app:tenant" in new and "ns0" not in new


def test_seclabel_text_is_what_the_diff_shows():
    assert core.seclabel_text(None) == ""
    assert core.seclabel_text({"type": "none", "model": "selinux", "relabel": True}) == \
        '<seclabel type="none" model="selinux" />'


# ---------------------------------------------------------------- host capabilities

def test_security_models_from_captured_capabilities():
    selinux = core.host_security(fixture("capabilities-selinux.xml"))
    assert selinux[0] == ("selinux", {"kvm": "system_u:system_r:svirt_t:s0",
                                      "qemu": "system_u:system_r:svirt_t:s0"})
    assert [name for name, dummy in selinux] == ["selinux", "dac"]
    apparmor = core.host_security(fixture("capabilities-apparmor.xml"))
    assert core.choose_model("auto", selinux) == "selinux"
    assert core.choose_model("auto", apparmor) == "apparmor"


def test_a_host_without_an_lsm_driver_is_refused_with_the_fix():
    with pytest.raises(core.SvirtError) as caught:
        core.choose_model("auto", [("none", {}), ("dac", {})])
    assert "security models: none, dac" in str(caught.value)
    assert "security_driver" in str(caught.value)
    with pytest.raises(core.SvirtError):
        core.choose_model("selinux", core.host_security(fixture("capabilities-apparmor.xml")))


# ---------------------------------------------------------------- requests

@pytest.mark.parametrize("request_, model, message", [
    ({"name": "a", "type": "none"}, "selinux", "allow_unconfined"),
    ({"name": "a", "categories": "c1,c2"}, "selinux", "only applies to type static"),
    ({"name": "a", "type": "static", "label": "u:r:t:s0:c1,c2", "categories": "c1,c2"},
     "selinux", "not both"),
    ({"name": "a", "relabel": False}, "selinux", "requires relabel"),
    ({"name": "a", "type": "static", "label": "system_u:system_r:svirt_t:s0"}, "selinux",
     "has no categories"),
    ({"name": "a", "type": "static", "categories": "c2000"}, "selinux", "c0-c1023"),
    ({"name": "a", "type": "static", "categories": "c1,c2"}, "apparmor", "AppArmor has no categories"),
    ({"name": "a", "type": "static"}, "apparmor", "needs label"),
    ({"name": "a", "type": "bogus"}, "selinux", "is not one of"),
])
def test_bad_requests_are_refused_before_the_host_is_read(request_, model, message):
    with pytest.raises(core.SvirtError) as caught:
        core.check_requests([request_], model, allow_unconfined=False)
    assert message in str(caught.value)


def test_unconfined_is_accepted_only_when_allowed():
    core.check_requests([{"name": "a", "type": "none"}], "selinux", allow_unconfined=True)
    with pytest.raises(core.SvirtError):
        core.check_requests([{"name": "a"}, {"name": "a"}], "selinux", False)


# ---------------------------------------------------------------- allocation

def test_allocation_is_fixed_by_the_uuid_and_avoids_what_is_taken():
    first = core.allocate(uuid(1), [])
    assert len(first) == 2 and first == core.allocate(uuid(1), [])
    assert core.allocate(uuid(2), []) != first
    moved = core.allocate(uuid(1), [first])
    assert moved != first


def test_allocation_avoids_overlap_with_single_categories_and_wide_ranges(monkeypatch):
    monkeypatch.setattr(core, "CATEGORY_MAX", 3)   # 6 pairs: every case is reachable
    pair = core.allocate(uuid(1), [frozenset({0}), frozenset({1})])
    assert pair == frozenset({2, 3})
    outside = (frozenset({0, 3}), frozenset({1, 3}), frozenset({2, 3}))
    assert core.allocate(uuid(1), [frozenset({0, 1, 2})]) in outside
    with pytest.raises(core.SvirtError) as caught:
        core.allocate(uuid(1), [frozenset({0, 1, 2, 3})])
    assert "no free category pair" in str(caught.value)


# ---------------------------------------------------------------- planning

def test_dynamic_guests_already_dynamic_need_nothing():
    domains = [domain("a", 1, DYNAMIC, running="c7,c860"), domain("b", 2, DYNAMIC)]
    plans, dummy = core.plan("selinux", [{"name": "a"}, {"name": "b"}], domains)
    assert [guest.changes_definition for guest in plans] == [False, False]


def test_implicit_default_becomes_explicit_dynamic():
    plans, dummy = core.plan("selinux", [{"name": "a"}], [domain("a", 1)])
    assert plans[0].changes_definition
    assert core.seclabel_for(plans[0].new_xml, "selinux")["type"] == "dynamic"


def test_static_without_label_allocates_once_then_keeps_it():
    plans, dummy = core.plan("selinux", [{"name": "a", "type": "static"}], [domain("a", 1)])
    guest = plans[0]
    assert guest.allocated and guest.changes_definition
    cats = core.context_categories(guest.after["label"])
    assert guest.after["label"] == core.with_categories(core.DEFAULT_BASELABEL, cats)
    again, dummy = core.plan("selinux", [{"name": "a", "type": "static"}],
                             [domain("a", 1, static(core.category_text(cats)))])
    assert not again[0].allocated and not again[0].changes_definition


def test_static_pair_on_a_reserved_pair_moves():
    plans, dummy = core.plan("selinux", [{"name": "a", "type": "static"}],
                             [domain("a", 1, static("c5,c6"))], reserved=["s0:c5,c6"])
    assert plans[0].allocated
    assert core.context_categories(plans[0].after["label"]) != frozenset({5, 6})


def test_allocation_avoids_running_static_and_reserved_pairs(monkeypatch):
    monkeypatch.setattr(core, "CATEGORY_MAX", 3)
    domains = [domain("run", 1, DYNAMIC, running="c0,c1"), domain("st", 2, static("c0,c2")),
               domain("new", 3)]
    plans, dummy = core.plan("selinux", [{"name": "new", "type": "static"}], domains,
                             reserved=["c1,c3", "c2,c3", "c0,c3"])
    assert core.context_categories(plans[0].after["label"]) == frozenset({1, 2})


def test_explicit_categories_use_the_hosts_base_label_for_the_domain_type():
    plans, dummy = core.plan("selinux", [{"name": "a", "type": "static", "categories": "c3,c1"}],
                             [domain("a", 1)], baselabels={"qemu": "system_u:system_r:svirt_tcg_t:s0"})
    assert plans[0].after["label"] == "system_u:system_r:svirt_tcg_t:s0:c1,c3"


def test_a_forced_duplicate_fails_naming_both_domains():
    # "b" was given a's running pair by hand (static labels copied between hosts)
    domains = [domain("a", 1, DYNAMIC, running="c7,c860"), domain("b", 2, static("c7,c860"))]
    with pytest.raises(core.SvirtError) as caught:
        core.plan("selinux", [{"name": "a"}], domains)
    assert "domains a and b share the categories c7,c860" in str(caught.value)


def test_an_explicit_label_equal_to_another_guests_pair_fails():
    domains = [domain("a", 1, DYNAMIC, running="c7,c860"), domain("b", 2)]
    with pytest.raises(core.SvirtError) as caught:
        core.plan("selinux", [{"name": "b", "type": "static", "categories": "c7,c860"}], domains)
    assert "a and b" in str(caught.value)


def test_of_two_running_guests_sharing_a_pair_only_the_later_moves():
    domains = [domain("a", 1, static("c7,c860"), running="c7,c860", kind="static"),
               domain("b", 2, static("c7,c860"), running="c7,c860", kind="static")]
    plans, planned = core.plan("selinux", [{"name": "a", "type": "static"},
                                           {"name": "b", "type": "static"}], domains)
    assert [guest.changes_definition for guest in plans] == [False, True]
    assert [core.restart_required(guest, "selinux") for guest in plans] == [False, True]
    # until b restarts both still run with the pair: reported, not failed
    assert core.collisions(domains, "selinux", planned) == [
        {"categories": "c7,c860", "domains": ["a", "b"], "where": "running"}]


def test_a_guest_whose_categories_include_anothers_is_reported():
    domains = [domain("a", 1, static("c5")), domain("b", 2, static("c5,c9"))]
    assert core.overlaps(domains, "selinux", {}) == [
        "b can read the images of a: its categories include all of a's"]


def test_unknown_guest_lists_the_domains_of_the_host():
    with pytest.raises(_libvirt.LibvirtError) as caught:
        core.plan("selinux", [{"name": "zz"}], [domain("a", 1), domain("b", 2)])
    assert "no libvirt domain zz on this host (give a name or UUID); its domains: a, b" in str(caught.value)


def test_guests_can_be_named_by_uuid():
    plans, dummy = core.plan("selinux", [{"name": uuid(2)}], [domain("a", 1), domain("b", 2)])
    assert plans[0].name == "b"


# ---------------------------------------------------------------- checks of running guests

@pytest.fixture
def host(tmp_path):
    """A host tree: libvirt's pid files, /proc/PID/attr/current and images with real xattrs."""
    return core.HostFiles(str(tmp_path))


def running_on(host, item, image_label=None, process_label=None, pools=None):
    """The guest as read from libvirt (pools: its storage pools) once its QEMU process and
    images exist in the host tree."""
    fresh = connection(FakeDomain(item.name, item.uuid, item.config_xml, item.live_xml),
                       pools=pools).domains(core.Domain)[0]
    root = Path(host.root)
    (root / "run/libvirt/qemu").mkdir(parents=True, exist_ok=True)
    (root / "run/libvirt/qemu" / (item.name + ".pid")).write_text("%d\n" % item.pid)
    attr = root / ("proc/%d/attr" % item.pid)
    attr.mkdir(parents=True)
    (attr / "current").write_bytes((process_label or item.process_label).encode() + b"\0")
    for disk in fresh.images("selinux"):
        image = Path(host.path(disk["path"]))
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(b"QFI\xfb")
        label = image_label or core.seclabel_for(item.live_xml, "selinux")["imagelabel"]
        os.setxattr(str(image), core.SELINUX_XATTR, label.encode() + b"\0")
    core.observe(fresh, "selinux", host)
    return fresh


def test_a_correctly_confined_guest_reads_ok(host):
    item = running_on(host, domain("a", 1, DYNAMIC, running="c7,c860"))
    assert item.pid == 1001 and item.process_label == "system_u:system_r:svirt_t:s0:c7,c860"
    report, fixes = core.check_selinux(item, "selinux", fix=True)
    assert report["problems"] == [] and fixes == []
    assert report["images"][0]["status"] == "ok"


def test_the_image_of_a_pool_backed_disk_is_checked_like_a_file(host):
    item = domain("a", 1, DYNAMIC, running="c7,c860")
    item.live_xml = item.live_xml.replace("<disk type='file' device='disk'>", "<disk type='volume' device='disk'>").replace(
        "<source file='/var/lib/libvirt/images/a.qcow2' index='1'/>", "<source pool='images' volume='a.qcow2' index='1'/>")
    wrong = "system_u:object_r:svirt_image_t:s0:c1,c2"
    item = running_on(host, item, image_label=wrong, pools={"images": {"a.qcow2": "/var/lib/libvirt/images/a.qcow2"}})
    report, dummy = core.check_selinux(item, "selinux", fix=False)
    assert [image["path"] for image in report["images"]] == ["/var/lib/libvirt/images/a.qcow2"]
    assert report["problems"] == ["image /var/lib/libvirt/images/a.qcow2 is labelled %s, expected "
                                  "system_u:object_r:svirt_image_t:s0:c7,c860" % wrong]


def test_a_process_with_another_label_is_reported(host):
    item = running_on(host, domain("a", 1, DYNAMIC, running="c7,c860"),
                      process_label="system_u:system_r:svirt_t:s0:c1,c2")
    report, dummy = core.check_selinux(item, "selinux", fix=True)
    assert report["problems"] == ["QEMU process runs as system_u:system_r:svirt_t:s0:c1,c2, "
                                  "the domain says system_u:system_r:svirt_t:s0:c7,c860"]


def test_a_relabelled_image_is_reported_for_dynamic_and_fixed_for_static(host):
    wrong = "system_u:object_r:svirt_image_t:s0:c1,c2"
    item = running_on(host, domain("a", 1, static("c7,c860"), running="c7,c860", kind="static"),
                      image_label=wrong)
    report, fixes = core.check_selinux(item, "selinux", fix=False)
    assert report["problems"] == ["image /var/lib/libvirt/images/a.qcow2 is labelled %s, expected "
                                  "system_u:object_r:svirt_image_t:s0:c7,c860" % wrong]
    plans, dummy = core.plan("selinux", [{"name": "a", "type": "static"}], [item])
    core.check_running(plans, [item], "selinux")
    assert plans[0].image_fixes == [("/var/lib/libvirt/images/a.qcow2", wrong,
                                     "system_u:object_r:svirt_image_t:s0:c7,c860")]
    core.apply(plans, define=None, host=host, run=None)
    assert host.file_label("/var/lib/libvirt/images/a.qcow2") == \
        "system_u:object_r:svirt_image_t:s0:c7,c860"


def test_shared_and_unlabelled_disks_are_skipped_with_a_reason(host):
    item = running_on(host, domain("a", 1, DYNAMIC, running="c7,c860"))
    item.live_xml = item.live_xml.replace("<target dev='vda'", "<readonly/><target dev='vda'")
    report, dummy = core.check_selinux(item, "selinux", fix=True)
    assert report["images"][0]["status"] == "skipped"
    assert "read-only" in report["images"][0]["reason"]


def test_an_unconfined_running_guest_is_a_problem(host):
    item = domain("a", 1, "<seclabel type='none' model='selinux'/>", running="c7,c860")
    item.live_xml = item.live_xml.replace("type='dynamic' model='selinux' relabel='yes'",
                                          "type='none' model='selinux'")
    report, dummy = core.check_selinux(item, "selinux", fix=True)
    assert report["problems"] == ["runs unconfined (no selinux label)"]


def apparmor_domain(process_label):
    item = core.Domain(FakeDomain("sv-a", "a1a98ad1-4a14-43a8-aa3d-e6543d3614ab",
                                  fixture("live-apparmor.xml"), fixture("live-apparmor.xml")))
    item.pid = 573
    item.process_label = core.clean_label(process_label)
    item.apparmor_files = fixture("apparmor-profile.files")
    return item


def test_apparmor_guest_in_enforce_mode_with_its_images_listed():
    report, reload_profile = core.check_apparmor(
        apparmor_domain(fixture("proc-attr-current-apparmor")), "apparmor", fix=True)
    assert report["problems"] == [] and reload_profile is None
    assert report["images"][0]["status"] == "ok"


def test_apparmor_complain_mode_is_fixed_or_reported():
    item = apparmor_domain("libvirt-a1a98ad1-4a14-43a8-aa3d-e6543d3614ab (complain)\n")
    report, reload_profile = core.check_apparmor(item, "apparmor", fix=True)
    assert reload_profile == "/etc/apparmor.d/libvirt/libvirt-a1a98ad1-4a14-43a8-aa3d-e6543d3614ab"
    report, reload_profile = core.check_apparmor(item, "apparmor", fix=False)
    assert reload_profile is None and "in complain mode" in report["problems"][0]


def test_apparmor_image_missing_from_the_profile_is_a_problem():
    item = apparmor_domain(fixture("proc-attr-current-apparmor"))
    item.apparmor_files = item.apparmor_files.replace("sv-a.qcow2", "other.qcow2")
    report, dummy = core.check_apparmor(item, "apparmor", fix=True)
    assert report["problems"] == ["image /var/lib/libvirt/images/sv-a.qcow2 is not in the files of "
                                  "profile libvirt-a1a98ad1-4a14-43a8-aa3d-e6543d3614ab"]


# ---------------------------------------------------------------- applying

def test_a_failure_while_writing_restores_what_was_written(host):
    defined = []

    def define(xml):
        if "<name>b</name>" in xml and "static" in xml:
            raise RuntimeError("libvirt refused b")
        defined.append(xml)

    domains = [domain("a", 1), domain("b", 2)]
    plans, dummy = core.plan("selinux", [{"name": "a", "type": "static"},
                                         {"name": "b", "type": "static"}], domains)
    with pytest.raises(RuntimeError):
        core.apply(plans, define, host, run=None)
    assert len(defined) == 2
    assert core.seclabel_for(defined[0], "selinux")["type"] == "static"
    assert defined[1] == domains[0].config_xml


def test_apparmor_reload_runs_apparmor_parser_with_an_argv_list():
    calls = []
    item = apparmor_domain("libvirt-a1a98ad1-4a14-43a8-aa3d-e6543d3614ab (complain)\n")
    plans, dummy = core.plan("apparmor", [{"name": "sv-a"}], [item])
    core.check_running(plans, [item], "apparmor")
    core.apply(plans, lambda xml: None, None, lambda argv, data=None: calls.append(argv) or (0, "", ""))
    assert calls == [["apparmor_parser", "--replace",
                      "/etc/apparmor.d/libvirt/libvirt-a1a98ad1-4a14-43a8-aa3d-e6543d3614ab"]]


# ---------------------------------------------------------------- end to end through a fake libvirt

def svirt_conn(items, capabilities=None):
    """A libvirt connection whose domains are these items as they are now."""
    return connection(*[FakeDomain(item.name, item.uuid, item.config_xml, item.live_xml) for item in items],
                      capabilities=capabilities or fixture("capabilities-selinux.xml"))


def test_evaluate_and_summary_report_every_domain(host):
    items = [running_on(host, domain("a", 1, DYNAMIC, running="c7,c860")), domain("b", 2),
             domain("c", 3, "<seclabel type='none' model='selinux'/>")]
    conn = svirt_conn(items)
    evaluation = core.evaluate(conn, {"guests": [{"name": "b", "type": "static"}]}, host)
    changed, result, warnings = core.summary(evaluation)
    assert changed and warnings == []
    assert result["model"] == "selinux"
    assert [d["name"] for d in result["domains"]] == ["a", "b", "c"]
    assert result["domains"][0]["process_label"] == "system_u:system_r:svirt_t:s0:c7,c860"
    assert result["domains"][1]["categories"] == result["guests"][0]["categories"]
    assert result["problems"] == ["c: defined with type none: its QEMU process runs unconfined"]
    core.apply(evaluation.plans, conn.define, host, run=None)
    assert len(conn.conn.defined) == 1
    diff = core.diff(evaluation.plans)
    assert diff["before"] == "# b\n\n" and result["guests"][0]["label"] in diff["after"]


def test_the_labels_report_is_written_only_when_it_differs(host, tmp_path):
    items = [running_on(host, domain("a", 1, DYNAMIC, running="c7,c860")), domain("b", 2)]
    evaluation = core.evaluate(svirt_conn(items), {"guests": [{"name": "b", "type": "static"}]}, host)
    _changed, result, _warnings = core.summary(evaluation)
    text = core.labels_report(result, host="kvm01")
    report = json.loads(text)
    assert report["host"] == "kvm01" and report["model"] == "selinux"
    assert [d["name"] for d in report["domains"]] == ["a", "b"]
    assert report["restart_required"] == [] and report["problems"] == []
    path = tmp_path / "kvmsec" / "svirt-labels.json"
    assert core.write_report(str(path), text) is True
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    mtime = path.stat().st_mtime_ns
    assert core.write_report(str(path), text) is False
    assert path.stat().st_mtime_ns == mtime and path.read_text() == text
    assert core.write_report(str(path), text.replace("kvm01", "kvm02")) is True
    assert json.loads(path.read_text())["host"] == "kvm02"


# the security models of this development machine's libvirt 9.0 (virsh capabilities)
NO_LSM = ("<capabilities><host><secmodel><model>none</model><doi>0</doi></secmodel>"
          "<secmodel><model>dac</model><doi>0</doi></secmodel></host></capabilities>")


@pytest.mark.parametrize("guests, message", [
    ([{"name": "zz"}], "guests[].name: no libvirt domain zz on this host (give a name or UUID); its domains: a, b"),
    ([{"name": "a"}, {"name": "zz", "type": "static"}], "guests[].name: no libvirt domain zz "),
    ([{"name": "a"}], "no SELinux or AppArmor driver (security models: none, dac)"),
    ([], "no SELinux or AppArmor driver (security models: none, dac)"),
])
def test_a_missing_guest_is_named_before_the_hosts_driver(host, guests, message):
    conn = svirt_conn([domain("a", 1), domain("b", 2)], capabilities=NO_LSM)
    with pytest.raises((core.SvirtError, _libvirt.LibvirtError)) as caught:
        core.evaluate(conn, {"guests": guests}, host)
    assert message in str(caught.value)


def test_decide_labels_the_guest_and_writes_the_report_only_when_applied(host, tmp_path):
    items = [running_on(host, domain("a", 1, DYNAMIC, running="c7,c860")), domain("b", 2)]
    conn = svirt_conn(items)
    report = tmp_path / "kvmsec" / "svirt-labels.json"
    params = {"guests": [{"name": "b", "type": "static"}], "report_path": str(report)}
    predicted, _warnings = returned(lambda: core.decide(conn, params, host, None), check_mode=True)
    assert predicted["changed"] and predicted["report_written"] is False
    assert conn.conn.defined == [] and not report.exists()
    done, _warnings = returned(lambda: core.decide(conn, params, host, None))
    assert done["report_written"] is True and len(conn.conn.defined) == 1
    assert json.loads(report.read_text())["domains"][1]["name"] == "b"
