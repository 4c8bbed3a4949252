"""Unit tests of the collection's libvirt layer, without Ansible or a daemon.

The domain XML fixtures were dumped from a real libvirt 9.0 (Debian 12): a guest whose first disk
is a volume of a directory pool with a backing file, running (``virsh dumpxml``) and defined
(``virsh dumpxml --inactive --security-info``). libvirt itself is the one fake libvirt of the
unit tests (``fake_libvirt.py``); the integration and lab tiers run the layer against real daemons.
"""

from pathlib import Path

import pytest

from ansible_collections.kvmsec.hardening.plugins.module_utils import _libvirt
from ansible_collections.kvmsec.hardening.tests.unit.plugins.module_utils.fake_libvirt import (
    FakeConn,
    FakeDomain,
    FakeLibvirt,
    connection,
)

FIXTURES = Path(__file__).resolve().parents[2] / "data" / "libvirt"
POOLS = {"fxpool": {"fx-vol.qcow2": "/tmp/fxpool/fx-vol.qcow2"}}


def fixture(name):
    return (FIXTURES / name).read_text()


def running_guest():
    return FakeDomain("fx-disks", "48934500-f3d2-41c8-b231-8d36c3cef67e", fixture("inactive-volume.xml"),
                      fixture("live-volume-chain.xml"))


def test_a_running_guests_volume_is_resolved_through_its_pool_with_its_backing_chain():
    domain = connection(running_guest(), pools=POOLS).domains()[0]
    vda, vdb, cdrom = domain.disks(live=True)
    assert (vda.type, vda.target, vda.volume) == ("volume", "vda", ("fxpool", "fx-vol.qcow2"))
    assert vda.path == "/tmp/fxpool/fx-vol.qcow2"
    assert vda.backing_files == ["/tmp/fxpool/base.qcow2"]
    assert (vdb.path, vdb.readonly, vdb.shareable, vdb.backing_files) == ("/tmp/fxpool/fx-file.qcow2", True,
                                                                          False, [])
    assert (cdrom.device, cdrom.path, cdrom.volume) == ("cdrom", None, None)


def test_the_definition_has_no_backing_chain_and_a_missing_pool_leaves_the_path_unknown():
    domain = connection(running_guest()).domains()[0]
    vda = domain.disks()[0]
    assert vda.volume == ("fxpool", "fx-vol.qcow2") and vda.path is None and vda.backing_files == []
    assert _libvirt.disks(fixture("live-volume-chain.xml"))[0].path is None


def test_volume_lookups_are_asked_once_per_volume():
    conn = connection(pools=POOLS)
    asked = []
    lookup = conn.conn.storagePoolLookupByName
    conn.conn.storagePoolLookupByName = lambda name: asked.append(name) or lookup(name)
    assert conn.volume_path("fxpool", "fx-vol.qcow2") == conn.volume_path("fxpool", "fx-vol.qcow2")
    assert conn.volume_path("nopool", "x") is None and conn.volume_path("nopool", "x") is None
    assert asked == ["fxpool", "nopool"]


def test_a_shut_off_guest_has_no_live_xml_and_a_transient_one_is_not_persistent():
    off = FakeDomain("off", config_xml=fixture("inactive-volume.xml"))
    transient = FakeDomain("tr", "00000000-0000-4000-8000-000000000002", live_xml=fixture("live-volume-chain.xml"),
                           persistent=False)
    off_record, transient_record = connection(off, transient).domains()
    assert (off_record.active, off_record.live_xml, off_record.disks(live=True)) == (False, None, [])
    assert (transient_record.active, transient_record.persistent) == (True, False)
    assert transient_record.live_xml == fixture("live-volume-chain.xml")


@pytest.mark.parametrize("key", ["fx-disks", "48934500-f3d2-41c8-b231-8d36c3cef67e",
                                 "48934500F3D241C8B2318D36C3CEF67E"])
def test_a_guest_is_found_by_name_or_uuid_with_or_without_dashes(key):
    assert connection(running_guest()).domain(key).name == "fx-disks"


def test_an_unknown_guest_is_named_with_the_guests_that_exist():
    conn = connection(running_guest(), FakeDomain("web"))
    with pytest.raises(_libvirt.LibvirtError) as caught:
        conn.domain("db", option="guests[].name")
    assert str(caught.value) == ("guests[].name: no libvirt domain db on this host (give a name or UUID); "
                                 "its domains: fx-disks, web")
    with pytest.raises(_libvirt.LibvirtError) as found:
        _libvirt.find(conn.domains(), "db", option="guests[].name")
    assert str(found.value) == str(caught.value)
    assert _libvirt.find(conn.domains(), "48934500F3D241C8B2318D36C3CEF67E").name == "fx-disks"


def test_a_connection_that_fails_says_how_to_fix_it():
    with pytest.raises(_libvirt.LibvirtError) as caught:
        _libvirt.Connection(FakeLibvirt(refuse="Failed to connect socket to '/run/libvirt/libvirt-sock'"),
                            "qemu:///system")
    assert str(caught.value) == (
        "cannot connect to libvirt at qemu:///system (Failed to connect socket to '/run/libvirt/libvirt-sock'): "
        "start the libvirt daemon or its socket (libvirtd, or virtqemud with the modular daemons), or set uri "
        "to the connection this host uses")


def test_an_edit_keeps_what_it_does_not_touch_and_nothing_is_written_for_no_change():
    text = fixture("inactive-volume.xml").replace(
        "<domain type='qemu'>",
        "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>").replace(
        "</domain>", "  <qemu:commandline><qemu:arg value='-S'/></qemu:commandline>\n</domain>")
    assert _libvirt.edited(text, lambda root: False) is None
    new = _libvirt.edited(text, lambda root: root.find("devices/disk/target").set("dev", "vdz"))
    assert "<qemu:commandline>" in new and "xmlns:qemu=" in new and "ns0:" not in new
    assert [disk.target for disk in _libvirt.disks(new)] == ["vdz", "vdb", "sda"]


def test_xml_that_does_not_parse_is_an_error_that_says_so():
    with pytest.raises(_libvirt.LibvirtError, match="libvirt returned domain XML that does not parse"):
        _libvirt.disks("<domain>")


def test_capabilities_and_definitions_go_through_the_connection():
    conn = _libvirt.Connection(FakeLibvirt(FakeConn(capabilities="<capabilities/>")))
    conn.define("<domain/>")
    assert conn.capabilities() == "<capabilities/>" and conn.conn.defined == ["<domain/>"]
    assert conn.secret("6a4f4b7e-7d4c-4a43-9d0e-3c1b1f0d2a10") is None
