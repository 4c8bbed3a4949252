#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: guest_policy
short_description: Hold every libvirt guest definition to the guest policy, in one call
version_added: 0.1.0
description:
  - Checks the persistent definition and, for a running guest, the live XML of every libvirt
    domain on the host against the rules in O(rules), and fixes what is a setting in the
    persistent definitions.
  - Settings that are fixed - C(memballoon) (a C(<memballoon model='none'/>), also where the
    definition names none and libvirt would add a virtio balloon), C(shared_memory) (shared
    memory access made private, unless a virtiofs share needs it), C(vhost_net) (the userspace
    backend when O(vhost_net=false)), C(cpu_mode) (the first of O(cpu_modes), KVM guests only, as
    TCG has no host CPU to pass through), C(cpu_mitigations) (features of O(cpu_features) no
    longer disabled), C(graphics_listen) (VNC and SPICE consoles moved to the first of
    O(graphics_listen)), C(disk_cache) (C(cache=unsafe) dropped for the hypervisor's default,
    which honours the guest's flushes), C(nwfilter) (the first of O(nwfilters) on every
    network, bridge or ethernet interface without a filter, when libvirt has it).
  - Devices that are only reported, since removing hardware from a guest is its operator's
    decision - C(ivshmem), C(host_devices) (host USB, serial and parallel devices not allowed by
    O(allow_host_devices); PCI passthrough is the vfio_bind module's), C(qemu_commandline)
    (C(<qemu:commandline>) pass-through), C(management_network) (an interface on one of
    O(management_networks)), and a traffic filter other than those of O(nwfilters).
  - Unconfined guests (C(<seclabel type='none'>)) are the svirt_label module's to report and fix.
  - A running guest keeps what it was started with; one whose live XML breaks a rule, or whose
    definition was just fixed, is returned in RV(restart_required). The module never restarts
    a guest.
  - Every definition is planned before anything is written; each new definition is read back
    from libvirt, and a failure restores the definitions already changed.
author: kvmsec.hardening developers (@kvmsec)
options:
  guests:
    description:
      - Names or UUIDs of the guests to check; by default every guest on the host. A name the
        host lacks fails the module before anything changes.
    type: list
    elements: str
    default: []
  rules:
    description: The rules in force; by default all of them.
    type: list
    elements: str
    choices: [memballoon, shared_memory, ivshmem, vhost_net, cpu_mode, cpu_mitigations, qemu_commandline,
              graphics_listen, host_devices, disk_cache, nwfilter, management_network]
    default: [memballoon, shared_memory, ivshmem, vhost_net, cpu_mode, cpu_mitigations, qemu_commandline,
              graphics_listen, host_devices, disk_cache, nwfilter, management_network]
  cpu_modes:
    description:
      - CPU modes a KVM guest may use; a guest with another gets the first. Both pass the host's
        mitigation features to the guest; C(host-model) keeps guests migratable between hosts
        with different CPUs.
    type: list
    elements: str
    default: [host-passthrough, host-model]
  cpu_features:
    description: CPU features of mitigations that no guest definition may disable.
    type: list
    elements: str
    default: [spec-ctrl, ssbd, md-clear]
  vhost_net:
    description:
      - Whether virtio interfaces may use the in-kernel vhost-net backend (libvirt's default).
        It is faster, and puts the guest's packet handling in the host kernel; V(false) gives
        them QEMU's userspace backend.
    type: bool
    default: true
  graphics_listen:
    description:
      - Addresses VNC and SPICE consoles may listen on. Remote consoles belong behind TLS
        (C(vnc_tls) in qemu.conf) or an SSH tunnel; add an address only with that in place.
    type: list
    elements: str
    default: ['127.0.0.1', '::1']
  allow_host_devices:
    description: Host device classes guests may have passed through.
    type: list
    elements: str
    choices: [usb, serial, parallel]
    default: []
  nwfilters:
    description:
      - libvirt traffic filters a guest interface may use; the first is added where an interface
        has none. C(clean-traffic) keeps a guest from spoofing MAC, IP and ARP.
    type: list
    elements: str
    default: [clean-traffic]
  management_networks:
    description: Bridges, libvirt networks or host interfaces of the host's management network, where no guest belongs.
    type: list
    elements: str
    default: []
  exceptions:
    description: Rules a guest may break, each with the reason; returned with the guest's results.
    type: list
    elements: dict
    default: []
    suboptions:
      guest:
        description: Name or UUID of the guest. An exception for a guest the host lacks is not used, with a warning.
        type: str
        required: true
      rules:
        description: The rules the guest is exempt from.
        type: list
        elements: str
        required: true
      reason:
        description: Why; reports show it.
        type: str
        required: true
attributes:
  check_mode:
    support: full
    description: Check mode plans every fix and returns it; no definition changes.
  diff_mode:
    support: full
    description: The diff shows each changed guest's definition before and after, console passwords masked.
  platform:
    platforms: posix
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - kvmsec.hardening.libvirt
notes:
  - Guests without a persistent definition (transient) are checked and reported, never changed.
  - A running C(host-model) guest shows the CPU model libvirt expanded it to; its CPU mode is
    judged from its definition.
seealso:
  - module: kvmsec.hardening.svirt_label
  - module: kvmsec.hardening.vfio_bind
  - name: libvirt domain XML format
    description: The elements the rules read.
    link: https://libvirt.org/formatdomain.html
  - name: libvirt network filters
    description: clean-traffic and the other filters libvirt ships.
    link: https://libvirt.org/formatnwfilter.html
"""

EXAMPLES = r"""
- name: Hold every guest to the policy, keeping the balloon of one with the reason
  kvmsec.hardening.guest_policy:
    management_networks: [br-mgmt]
    exceptions:
      - guest: db01
        rules: [memballoon]
        reason: free page reporting for the memory overcommit pilot (CHG-1042)
  register: guest_policy

- name: Say which guests wait for a restart
  ansible.builtin.debug:
    var: guest_policy.restart_required

- name: Audit only the CPU rules
  kvmsec.hardening.guest_policy:
    rules: [cpu_mode, cpu_mitigations]
  check_mode: true
"""

RETURN = r"""
guests:
  description: Every guest checked (by default every guest on the host), in name order.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The guest's name.
      type: str
    active:
      description: Whether it runs.
      type: bool
    persistent:
      description: Whether it has a persistent definition.
      type: bool
    changed:
      description: Whether its definition was (in check mode, would be) changed.
      type: bool
    violations:
      description:
        - Violations of its definition - C(rule), C(detail) and C(status), C(fixed) (in check
          mode, would be fixed) or C(open) (left for the operator).
      type: list
      elements: dict
    running_violations:
      description: Violations in the live XML of a running guest, gone at its next start when its definition is fixed.
      type: list
      elements: dict
    restart_required:
      description: Whether the running guest needs a restart to run by the policy.
      type: bool
    exceptions:
      description: The rules it is exempt from, each with C(rule) and C(reason).
      type: list
      elements: dict
  sample:
    - name: web01
      active: true
      persistent: true
      changed: true
      violations:
        - rule: memballoon
          detail: "memballoon model virtio: the guest learns and steers host memory"
          status: fixed
      running_violations:
        - rule: memballoon
          detail: "memballoon model virtio: the guest learns and steers host memory"
          status: running
      restart_required: true
      exceptions: []
problems:
  description: The violations left open after the run, each as guest, rule and detail separated by colons.
  returned: always
  type: list
  elements: str
  sample: ["db01: ivshmem: ivshmem device ivshmem0: memory shared with other guests or the host; remove the device or add an exception"]
restart_required:
  description: Running guests whose live XML breaks a rule or whose definition was just fixed.
  returned: always
  type: list
  elements: str
  sample: [web01]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kvmsec.hardening.plugins.module_utils import _guest_policy as core
from ansible_collections.kvmsec.hardening.plugins.module_utils._libvirt import URI_SPEC
from ansible_collections.kvmsec.hardening.plugins.module_utils._respawn import libvirt_connection, libvirt_errors
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import run


def argument_spec():
    spec = dict(
        guests=dict(type="list", elements="str", default=[]),
        rules=dict(type="list", elements="str", choices=list(core.RULES), default=list(core.RULES)),
        cpu_modes=dict(type="list", elements="str", default=core.DEFAULTS["cpu_modes"]),
        cpu_features=dict(type="list", elements="str", default=core.DEFAULTS["cpu_features"]),
        vhost_net=dict(type="bool", default=True),
        graphics_listen=dict(type="list", elements="str", default=core.DEFAULTS["graphics_listen"]),
        allow_host_devices=dict(type="list", elements="str", choices=list(core.HOST_DEVICES), default=[]),
        nwfilters=dict(type="list", elements="str", default=core.DEFAULTS["nwfilters"]),
        management_networks=dict(type="list", elements="str", default=[]),
        exceptions=dict(type="list", elements="dict", default=[], options=dict(
            guest=dict(type="str", required=True),
            rules=dict(type="list", elements="str", required=True),
            reason=dict(type="str", required=True),
        )),
    )
    spec.update(URI_SPEC)
    return spec


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    policy = dict((key, module.params[key]) for key in core.DEFAULTS)

    def decide():
        core.validate(policy)  # bad input is said before libvirt is asked
        return core.decide(libvirt_connection(module, module.params["uri"]), policy)

    run(module, decide, (core.GuestPolicyError,) + libvirt_errors(), "guest_policy")


if __name__ == "__main__":
    main()
