"""Unit tests of the guest definition policy core, without Ansible or a daemon.

The base definition is real: ``virsh dumpxml --inactive`` of a guest in the SELinux lab VM
(libvirt 9.0 re-added its virtio balloon). Each test adds one violation to it. libvirt is the one
fake libvirt of the unit tests; the integration tier runs the module against a real libvirtd.
"""

import copy
from pathlib import Path

import pytest

from ansible_collections.kvmsec.hardening.plugins.module_utils import _guest_policy as core
from ansible_collections.kvmsec.hardening.plugins.module_utils._libvirt import LibvirtError, parse
from ansible_collections.kvmsec.hardening.tests.unit.plugins.module_utils.fake_libvirt import (
    FakeDomain,
    connection,
    libvirtError,
)

LAB_XML = (Path(__file__).resolve().parents[2] / "data" / "svirt_label" / "inactive-static.xml").read_text()
CONTEXT = {"nwfilters": ["clean-traffic"]}
NIC = ("<interface type='bridge'><mac address='52:54:00:aa:bb:01'/><source bridge='br-guests'/>"
       "<model type='virtio'/></interface>")


def policy(**changes):
    wanted = copy.deepcopy(core.DEFAULTS)
    wanted.update(changes)
    return wanted


def compliant(xml_text=LAB_XML):
    """The lab guest with its balloon off: nothing else in it breaks a rule."""
    return xml_text.replace("<memballoon model='virtio'>\n      <address type='pci' domain='0x0000' bus='0x00' "
                            "slot='0x03' function='0x0'/>\n    </memballoon>", "<memballoon model='none'/>")


def with_devices(xml_text, *devices):
    return xml_text.replace("  </devices>", "".join("    %s\n" % device for device in devices) + "  </devices>")


def rules_of(xml_text, **changes):
    return [(v.rule, bool(v.fix)) for v in core.violations(xml_text, policy(**changes), CONTEXT)]


def test_the_lab_guest_breaks_only_the_balloon_rule_and_the_fix_turns_it_off():
    found = core.violations(LAB_XML, policy(), CONTEXT)
    assert [(v.rule, v.detail) for v in found] == [
        ("memballoon", "memballoon model virtio: the guest learns and steers host memory")]
    new = core.fixed(LAB_XML, found)
    balloon = parse(new).find("devices/memballoon")
    assert balloon.attrib == {"model": "none"} and list(balloon) == []
    assert core.violations(new, policy(), CONTEXT) == []
    assert core.violations(compliant(), policy(), CONTEXT) == []


def test_a_definition_without_a_balloon_gets_one_that_is_off():
    text = LAB_XML.replace(LAB_XML[LAB_XML.index("    <memballoon"):LAB_XML.index("  </devices>")], "")
    assert rules_of(text) == [("memballoon", True)]
    assert parse(core.fixed(text, core.violations(text, policy(), CONTEXT))).find(
        "devices/memballoon").get("model") == "none"


@pytest.mark.parametrize("violation, rule, fixable", [
    ("<shmem name='ivshmem0'><model type='ivshmem-plain'/><size unit='M'>4</size></shmem>", "ivshmem", False),
    ("<hostdev mode='subsystem' type='usb'><source><vendor id='0x0781'/><product id='0x5567'/></source></hostdev>",
     "host_devices", False),
    ("<serial type='dev'><source path='/dev/ttyS0'/><target port='0'/></serial>", "host_devices", False),
    ("<parallel type='dev'><source path='/dev/parport0'/><target port='0'/></parallel>", "host_devices", False),
    ("<graphics type='vnc' port='-1' autoport='yes' listen='0.0.0.0'><listen type='address' address='0.0.0.0'/>"
     "</graphics>", "graphics_listen", True),
    ("<graphics type='spice' autoport='yes'><listen type='network' network='default'/></graphics>",
     "graphics_listen", True),
    (NIC, "nwfilter", True),
    ("<interface type='network'><mac address='52:54:00:aa:bb:02'/><source network='default'/>"
     "<filterref filter='no-mac-spoofing'/></interface>", "nwfilter", False),
])
def test_each_device_rule_names_its_violation_and_only_settings_are_fixed(violation, rule, fixable):
    text = with_devices(compliant(), violation)
    assert rules_of(text) == [(rule, fixable)]
    if fixable:
        assert core.violations(core.fixed(text, core.violations(text, policy(), CONTEXT)), policy(), CONTEXT) == []


def test_allowed_devices_and_consoles_pass():
    text = with_devices(compliant(), "<serial type='pty'><target port='0'/></serial>",
                        "<serial type='dev'><source path='/dev/ttyS1'/><target port='1'/></serial>",
                        "<graphics type='vnc' port='-1' autoport='yes'><listen type='address' address='127.0.0.1'/>"
                        "</graphics>", "<graphics type='spice'><listen type='socket'/></graphics>",
                        "<interface type='direct'><source dev='eth1' mode='vepa'/></interface>")
    assert rules_of(text, allow_host_devices=["serial"]) == []
    assert rules_of(text) == [("host_devices", False)]


def test_consoles_move_to_the_first_allowed_address():
    text = with_devices(compliant(), "<graphics type='vnc' port='-1' autoport='yes' listen='0.0.0.0'>"
                                     "<listen type='address' address='0.0.0.0'/></graphics>")
    graphics = parse(core.fixed(text, core.violations(text, policy(), CONTEXT))).find("devices/graphics")
    assert graphics.get("listen") == "127.0.0.1" and graphics.find("listen").get("address") == "127.0.0.1"


def test_the_traffic_filter_is_added_only_where_libvirt_has_it():
    text = with_devices(compliant(), NIC)
    new = core.fixed(text, core.violations(text, policy(), CONTEXT))
    assert parse(new).find("devices/interface/filterref").get("filter") == "clean-traffic"
    missing = core.violations(text, policy(), {"nwfilters": []})
    assert [(v.rule, v.fix) for v in missing] == [("nwfilter", None)]
    assert "libvirt on this host has no filter clean-traffic" in missing[0].detail


def test_shared_memory_is_made_private_unless_a_virtiofs_share_needs_it():
    text = compliant().replace("  <devices>", "  <memoryBacking><source type='memfd'/><access mode='shared'/>"
                                              "</memoryBacking>\n  <devices>")
    assert rules_of(text) == [("shared_memory", True)]
    new = core.fixed(text, core.violations(text, policy(), CONTEXT))
    assert parse(new).find("memoryBacking/access") is None and parse(new).find("memoryBacking/source") is not None
    share = with_devices(text, "<filesystem type='mount'><driver type='virtiofs'/><source dir='/srv'/>"
                               "<target dir='srv'/></filesystem>")
    found = core.violations(share, policy(), CONTEXT)
    assert [(v.rule, v.fix) for v in found] == [("shared_memory", None)] and "virtiofs" in found[0].detail


def test_kvm_guests_get_a_host_cpu_mode_and_their_mitigations_back():
    text = compliant().replace("<domain type='qemu'>", "<domain type='kvm'>").replace(
        "<model fallback='forbid'>qemu64</model>",
        "<model fallback='forbid'>qemu64</model>\n    <feature policy='disable' name='spec-ctrl'/>"
        "<feature policy='require' name='ssbd'/>")
    assert rules_of(text) == [("cpu_mode", True), ("cpu_mitigations", True)]
    cpu = parse(core.fixed(text, core.violations(text, policy(), CONTEXT))).find("cpu")
    assert cpu.attrib == {"mode": "host-passthrough"} and cpu.find("model") is None
    assert [f.get("name") for f in cpu.findall("feature")] == ["ssbd"]
    assert rules_of(text, cpu_modes=["host-model"], rules=["cpu_mode"]) == [("cpu_mode", True)]
    # TCG has no host CPU to pass through: the lab's qemu64 guest is fine
    assert rules_of(compliant(), rules=["cpu_mode"]) == []


def test_unsafe_disk_cache_qemu_arguments_vhost_and_management_network():
    qemu = compliant().replace("<domain type='qemu'>", "<domain type='qemu' "
                               "xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>").replace(
        "</domain>", "  <qemu:commandline><qemu:arg value='-no-hpet'/></qemu:commandline>\n</domain>")
    text = with_devices(qemu.replace("<driver name='qemu' type='qcow2'/>",
                                     "<driver name='qemu' type='qcow2' cache='unsafe'/>"),
                        NIC.replace("<model type='virtio'/>", "<model type='virtio'/><filterref filter='clean-traffic'/>"))
    assert rules_of(text, vhost_net=False, management_networks=["br-guests"]) == [
        ("vhost_net", True), ("qemu_commandline", False), ("disk_cache", True), ("management_network", False)]
    new = core.fixed(text, core.violations(text, policy(vhost_net=False), CONTEXT))
    assert parse(new).find("devices/disk/driver").get("cache") is None
    assert parse(new).find("devices/interface/driver").get("name") == "qemu"
    assert "<qemu:commandline>" in new and "ns0" not in new


@pytest.mark.parametrize("changes, message", [
    ({"rules": ["memballoon", "balloon"]}, "rules: unknown rule balloon; valid rules: memballoon, shared_memory"),
    ({"cpu_modes": ["custom"]}, "cpu_modes: custom is not a mode that passes the host's mitigations through"),
    ({"graphics_listen": []}, "graphics_listen: empty"),
    ({"nwfilters": []}, "nwfilters: empty"),
    ({"exceptions": [{"guest": "db", "rules": ["memballoon"], "reason": " "}]},
     "exceptions[0] (guest db): reason is empty"),
    ({"exceptions": [{"guest": "db", "rules": ["baloon"], "reason": "x"}]},
     "exceptions[0] (guest db): rules baloon; valid rules:"),
    ({"management_networks": ["192.0.2.0/24"]}, "management_networks: '192.0.2.0/24' is not the name of a bridge"),
    ({"management_networks": ["192.0.2.1"]}, "management_networks: '192.0.2.1' is not the name of a bridge"),
    ({"management_networks": ["br mgmt"]}, "management_networks: 'br mgmt' is not the name of a bridge"),
    ({"management_networks": [""]}, "management_networks: '' is not the name of a bridge"),
])
def test_bad_policies_are_refused_naming_the_option(changes, message):
    with pytest.raises(core.GuestPolicyError) as caught:
        core.validate(policy(**changes))
    assert message in str(caught.value)


def guests(*handles, **kwargs):
    conn = connection(*handles, **kwargs)
    return conn, conn.domains()


def test_plan_fixes_definitions_reports_devices_and_running_guests_need_a_restart():
    broken = with_devices(LAB_XML.replace("sv-b", "db"), "<shmem name='ivshmem0'/>")
    running = LAB_XML.replace("sv-b", "web").replace("11daf27a", "22daf27a")
    conn, domains = guests(FakeDomain("db", "11daf27a-738c-49df-94ef-9e544a72c61e", broken),
                           FakeDomain("web", "22daf27a-738c-49df-94ef-9e544a72c61e", running, live_xml=running))
    plans, warnings = core.plan(domains, policy(), CONTEXT)
    changed, result, diff = core.summary(plans)
    assert changed and warnings == []
    assert result["problems"] == ["db: ivshmem: ivshmem device ivshmem0: memory shared with other guests or the "
                                  "host; remove the device or add an exception"]
    assert result["restart_required"] == ["web"]
    assert [(g["name"], [v["status"] for v in g["violations"]]) for g in result["guests"]] == [
        ("db", ["fixed", "open"]), ("web", ["fixed"])]
    assert [d["before_header"] for d in diff] == ["db (definition)", "web (definition)"]
    assert [d["after_header"] for d in diff] == ["db (definition, fixed: memballoon)",
                                                 "web (definition, fixed: memballoon)"]
    assert "<memballoon model=\"none\" />" in diff[0]["after"] and "virtio" in diff[0]["before"]
    # the edit keeps libvirt's layout, so the diff shows only what changed
    assert "<memballoon model=\"none\" />\n  </devices>" in diff[1]["after"]
    core.apply(plans, conn, policy(), CONTEXT)
    assert len(conn.conn.defined) == 2
    again, result, dummy = core.summary(core.plan(conn.domains(), policy(), CONTEXT)[0])
    assert not again and result["restart_required"] == ["web"]  # until libvirt starts it again


def test_exceptions_keep_a_rule_for_a_guest_with_the_reason_and_unknown_guests_only_warn():
    conn, domains = guests(FakeDomain("db", config_xml=LAB_XML.replace("sv-b", "db")))
    exceptions = [{"guest": "db", "rules": ["memballoon"], "reason": "free page reporting (CHG-7)"},
                  {"guest": "gone", "rules": ["ivshmem"], "reason": "old"}]
    plans, warnings = core.plan(domains, policy(exceptions=exceptions), CONTEXT)
    changed, result, dummy = core.summary(plans)
    assert not changed and result["problems"] == []
    assert result["guests"][0]["exceptions"] == [{"rule": "memballoon", "reason": "free page reporting (CHG-7)"}]
    assert warnings == ["exceptions[1].guest: no libvirt domain gone on this host (give a name or UUID); its "
                        "domains: db: the exception is not used"]


def test_guests_narrows_the_check_and_an_unknown_guest_fails_before_anything():
    conn, domains = guests(FakeDomain("a", config_xml=LAB_XML.replace("sv-b", "a")),
                           FakeDomain("b", "00000000-0000-4000-8000-000000000009", config_xml=LAB_XML))
    plans, dummy = core.plan(domains, policy(guests=["00000000-0000-4000-8000-000000000009", "b"]), CONTEXT)
    assert [guest.domain.name for guest in plans] == ["b"]
    with pytest.raises(LibvirtError, match="guests: no libvirt domain c on this host"):
        core.plan(domains, policy(guests=["a", "c"]), CONTEXT)


def test_transient_guests_are_reported_not_changed():
    conn, domains = guests(FakeDomain("tmp", config_xml=LAB_XML, live_xml=LAB_XML, persistent=False))
    changed, result, dummy = core.summary(core.plan(domains, policy(), CONTEXT)[0])
    assert not changed and result["problems"][0].startswith("tmp: memballoon:")


def test_a_definition_libvirt_refuses_restores_those_already_changed():
    first = LAB_XML.replace("sv-b", "a")
    second = with_devices(LAB_XML.replace("sv-b", "b").replace("11daf27a", "33daf27a"),
                          "<graphics type='vnc' listen='0.0.0.0'/>")
    conn, domains = guests(FakeDomain("a", "11daf27a-738c-49df-94ef-9e544a72c61e", first),
                           FakeDomain("b", "33daf27a-738c-49df-94ef-9e544a72c61e", second),
                           refuse_define="listen=\"127.0.0.1\"")
    plans, dummy = core.plan(domains, policy(), CONTEXT)
    with pytest.raises(libvirtError):
        core.apply(plans, conn, policy(), CONTEXT)
    assert conn.domain("a").config_xml == first


def test_console_passwords_never_reach_the_diff():
    text = with_devices(LAB_XML, "<graphics type='vnc' listen='0.0.0.0' passwd='s3cret-vnc'/>")
    conn, domains = guests(FakeDomain("sv-b", config_xml=text))
    dummy, result, diff = core.summary(core.plan(domains, policy(), CONTEXT)[0])
    assert "s3cret-vnc" not in repr(diff) + repr(result) and "passwd=\"********\"" in diff[0]["after"]
