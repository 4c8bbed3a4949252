"""The pool_images core over the one fake libvirt (the image_encryption role's integration test
reads a real pool of this machine's libvirtd with it)."""

import pytest

from ansible_collections.kvmsec.hardening.plugins.module_utils import _libvirt
from ansible_collections.kvmsec.hardening.plugins.module_utils import _pool_images as core
from ansible_collections.kvmsec.hardening.tests.unit.plugins.module_utils.fake_libvirt import FakePool, connection

POOL = {"b.qcow2": ("/srv/vms/b.qcow2", "qcow2"), "a.qcow2": ("/srv/vms/a.qcow2", "qcow2"),
        "c.img": ("/srv/vms/c.img", "raw"), "a.qcow2.2026-12-06@10:00~": ("/srv/vms/a.qcow2.2026-12-06@10:00~", "qcow2"),
        "notes.txt": "/srv/vms/notes.txt"}


def test_qcow2_volumes_by_name_without_backups_or_other_formats():
    plan = core.decide(connection(pools={"vms": POOL}), ["vms"])
    assert not plan.changed and plan.apply is None
    assert plan.result["paths"] == ["/srv/vms/a.qcow2", "/srv/vms/b.qcow2"]
    assert plan.result["images"][0] == {"pool": "vms", "name": "a.qcow2", "path": "/srv/vms/a.qcow2", "format": "qcow2"}


def test_formats_select_and_empty_formats_take_every_volume_with_refresh():
    pool = FakePool(POOL)
    conn = connection(pools={"vms": pool})
    assert core.decide(conn, ["vms"], ["raw"]).result["paths"] == ["/srv/vms/c.img"]
    assert pool.refreshed == 0
    assert core.decide(conn, ["vms"], [], refresh=True).result["paths"] == [
        "/srv/vms/a.qcow2", "/srv/vms/b.qcow2", "/srv/vms/c.img", "/srv/vms/notes.txt"]
    assert pool.refreshed == 1


def test_a_missing_or_inactive_pool_is_named():
    conn = connection(pools={"vms": FakePool(POOL, active=False)})
    with pytest.raises(_libvirt.LibvirtError, match="pools: no libvirt storage pool nosuch on this host"):
        core.decide(conn, ["nosuch"])
    with pytest.raises(_libvirt.LibvirtError, match="pools: the storage pool vms is not active"):
        core.decide(conn, ["vms"])


@pytest.mark.parametrize("pools, formats, message", [
    ([], ["qcow2"], "pools: empty"), (["my pool"], ["qcow2"], "pools: 'my pool' is not a name"),
    (["vms"], [""], "formats: '' is not a name"),
])
def test_bad_input_is_refused(pools, formats, message):
    with pytest.raises(core.PoolImagesError, match=message):
        core.validate(pools, formats)
