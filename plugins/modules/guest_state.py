#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: guest_state
short_description: Shut libvirt guests down, or start them, and wait until they are
version_added: 0.1.0
description:
  - Brings the guests of O(guests) to O(state) - C(shut_off) around work that needs their disks
    at rest (converting an image), C(running) to start them again - and waits until each is
    there, for at most O(timeout) seconds.
  - A shutdown is a request to the guest's OS (ACPI), which may take its time or never answer.
    A guest still running at the limit is powered off only with O(force_off=true), and that is
    warned about; otherwise the guests this call shut down are started again and the module fails
    naming the guest that did not stop, leaving the host as it was.
  - A guest already in O(state) is left alone; in check mode nothing is asked of any guest.
    Stopping a guest is a disruption - run this module only where the operator allowed it.
author: kvmsec.hardening developers (@kvmsec)
options:
  guests:
    description: Names or UUIDs of the guests. A name the host lacks fails the module before any guest is touched.
    type: list
    elements: str
    required: true
  state:
    description: C(shut_off) or C(running).
    type: str
    choices: [shut_off, running]
    required: true
  timeout:
    description: Seconds to wait for the guests to shut down (or to run after a start), 1 to 86400.
    type: int
    default: 300
  force_off:
    description: Power off (C(virsh destroy)) a guest that did not shut down within O(timeout).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Check mode returns which guests would be shut down or started; no guest is asked anything.
  diff_mode:
    support: full
    description: The diff lists the guests that change, with their state before and after.
  platform:
    platforms: posix
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - kvmsec.hardening.libvirt
seealso:
  - module: kvmsec.hardening.qcow2_encrypt
  - module: kvmsec.hardening.pool_images
"""

EXAMPLES = r"""
- name: Shut the database guests down, powering off one that does not answer within two minutes
  kvmsec.hardening.guest_state:
    guests: [db1, db2]
    state: shut_off
    timeout: 120
    force_off: true
  register: stopped

- name: Start them again
  kvmsec.hardening.guest_state:
    guests: "{{ stopped.changes | map(attribute='key') }}"
    state: running
"""

RETURN = r"""
changes:
  description: The guests that changed state (check mode - would), each with its state before and after.
  returned: always
  type: list
  elements: dict
  sample: [{"key": "db1", "before": "running", "after": "shut_off"}]
forced_off:
  description: Guests powered off because they did not shut down within O(timeout).
  returned: always
  type: list
  elements: str
  sample: ["db2"]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kvmsec.hardening.plugins.module_utils import _guest_state as core
from ansible_collections.kvmsec.hardening.plugins.module_utils._libvirt import URI_SPEC
from ansible_collections.kvmsec.hardening.plugins.module_utils._respawn import libvirt_connection, libvirt_errors
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import run


def main():
    spec = dict(
        guests=dict(type="list", elements="str", required=True),
        state=dict(type="str", choices=list(core.STATES), required=True),
        timeout=dict(type="int", default=300),
        force_off=dict(type="bool", default=False),
    )
    spec.update(URI_SPEC)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    params = module.params

    def decide():
        core.validate(params["guests"], params["state"], params["timeout"])  # before libvirt is asked
        return core.decide(libvirt_connection(module, params["uri"]), params["guests"], params["state"],
                           params["timeout"], params["force_off"])

    run(module, decide, (core.GuestStateError,) + libvirt_errors(), "guest_state")


if __name__ == "__main__":
    main()
