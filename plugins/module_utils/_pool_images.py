# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guest images of libvirt storage pools, as libvirt knows them. Private to the collection.

Each volume's format is the one libvirt records in the volume's XML (what ``virsh vol-dumpxml``
shows), not a guess from its name. Volumes named like the backups qcow2_encrypt keeps beside an
image (``NAME~``, as editors and ``cp --backup`` name theirs) are not images of their own and
are left out.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import Plan


class PoolImagesError(Exception):
    """Bad input; the message names the option and what is valid."""


def validate(pools, formats):
    for option, values in (("pools", pools), ("formats", formats)):
        bad = [value for value in values if not isinstance(value, str) or not value.strip() or " " in value]
        if bad:
            raise PoolImagesError("%s: %r is not a name" % (option, bad[0]))
    if not pools:
        raise PoolImagesError("pools: empty; give the storage pools to read (virsh pool-list --all)")


def decide(conn, pools, formats=("qcow2",), refresh=False):
    """The images of the pools whose format is one of formats (empty: any), in pool order."""
    validate(pools, formats)
    images = []
    for pool in pools:
        for name, path, volume_format in conn.pool_volumes(pool, refresh=refresh):
            if name.endswith("~") or (formats and volume_format not in formats):
                continue
            images.append(dict(pool=pool, name=name, path=path, format=volume_format))
    # reading (and refreshing, which only reads the directory again) changes nothing
    return Plan(False, dict(images=images, paths=[image["path"] for image in images]))
