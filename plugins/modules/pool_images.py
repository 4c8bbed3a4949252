#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: pool_images
short_description: List the guest images of libvirt storage pools, by their format
version_added: 0.1.0
description:
  - Returns the volumes of the storage pools in O(pools) whose format, as libvirt records it in
    the volume's XML, is one of O(formats) - by default the qcow2 images.
  - Volumes named like backups (C(NAME~), as M(kvmsec.hardening.qcow2_encrypt) names the
    plaintext copy it keeps) are not images of their own and are left out.
  - A pool the host lacks, or one that is not active, fails the module naming it.
author: kvmsec.hardening developers (@kvmsec)
options:
  pools:
    description: Names of the storage pools.
    type: list
    elements: str
    required: true
  formats:
    description: Volume formats to return (C(qcow2), C(raw), ...); empty - every volume.
    type: list
    elements: str
    default: [qcow2]
  refresh:
    description: Have libvirt read each pool's directory again first, so volumes changed outside libvirt show as they are now.
    type: bool
    default: false
extends_documentation_fragment:
  - kvmsec.hardening.info_module
  - kvmsec.hardening.libvirt
seealso:
  - module: kvmsec.hardening.qcow2_encrypt
"""

EXAMPLES = r"""
- name: Find the qcow2 images of the default pool
  kvmsec.hardening.pool_images:
    pools: [default]
  register: pool

- name: Show their paths
  ansible.builtin.debug:
    var: pool.paths
"""

RETURN = r"""
images:
  description: The images, pool by pool in O(pools) order and by volume name within a pool.
  returned: always
  type: list
  elements: dict
  sample: [{"pool": "default", "name": "web.qcow2", "path": "/var/lib/libvirt/images/web.qcow2", "format": "qcow2"}]
paths:
  description: The images' paths, in the same order.
  returned: always
  type: list
  elements: str
  sample: ["/var/lib/libvirt/images/web.qcow2"]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kvmsec.hardening.plugins.module_utils import _pool_images as core
from ansible_collections.kvmsec.hardening.plugins.module_utils._libvirt import URI_SPEC
from ansible_collections.kvmsec.hardening.plugins.module_utils._respawn import libvirt_connection, libvirt_errors
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import run


def main():
    spec = dict(
        pools=dict(type="list", elements="str", required=True),
        formats=dict(type="list", elements="str", default=["qcow2"]),
        refresh=dict(type="bool", default=False),
    )
    spec.update(URI_SPEC)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    params = module.params

    def decide():
        core.validate(params["pools"], params["formats"])  # before libvirt is asked
        return core.decide(libvirt_connection(module, params["uri"]), params["pools"], params["formats"],
                           params["refresh"])

    run(module, decide, (core.PoolImagesError,) + libvirt_errors(), "pool_images")


if __name__ == "__main__":
    main()
