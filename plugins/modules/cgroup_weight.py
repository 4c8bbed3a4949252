#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: cgroup_weight
short_description: Give guests their share of disk and CPU with cgroup weights and throttles
version_added: 0.1.0
description:
  - Sets the I/O weight (for the guest and per block device), the CPU weight and per-device
    I/O throttles of many guests in one call.
  - A libvirt domain (O(guests[].target=domain)) is changed through libvirt-python, so the
    domain definition stays the source of truth and persistent values return when the guest
    restarts.
  - A QEMU process that libvirt does not manage (O(guests[].target=process)) is found by its
    C(-name) or pid and moved into a named cgroup, by writing cgroupfs directly. This does not
    survive a restart of that process; run the module again after starting it.
  - Every weight uses one scale, the cgroup v2 weight scale C(1)-C(10000) with default C(100),
    mapped per host - unchanged into C(io.weight), C(io.bfq.weight), C(blkio.bfq.weight),
    C(blkio.weight) and C(cpu.weight); times 10.24 into cgroup v1 C(cpu.shares) (default 1024).
    The BFQ files accept C(1)-C(1000) and the legacy CFQ C(blkio.weight) C(10)-C(1000); a value
    outside the range valid on the host fails with that range.
  - Reads the current live and persistent values first and changes only what differs. All
    guests are checked before anything is written; an unknown guest, an unknown device, a value
    out of range or a missing controller changes nothing, and a failure while writing restores
    the values already written.
author: kvmsec.hardening developers (@kvmsec)
options:
  guests:
    description:
      - The guests and the values to set. Values left out are not managed.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description:
          - Domain name or UUID for O(guests[].target=domain); the QEMU C(-name) for
            O(guests[].target=process).
        type: str
        required: true
      target:
        description:
          - C(domain) for a libvirt domain, C(process) for a QEMU process outside libvirt.
        type: str
        choices: [domain, process]
        default: domain
      pid:
        description:
          - The QEMU process, when O(guests[].name) does not identify it (process targets).
        type: int
      cgroup:
        description:
          - Cgroup path, relative to each controller's hierarchy, for a process target. Created
            when missing.
          - Defaults to C(kvmsec/NAME).
        type: str
      io_weight:
        description:
          - I/O weight of the guest on the scale C(1)-C(10000) (default of an unmanaged guest
            C(100)). BFQ hosts accept C(1)-C(1000).
        type: int
      cpu_weight:
        description:
          - CPU weight of the guest on the scale C(1)-C(10000) (default C(100)).
        type: int
      devices:
        description:
          - Per block device values. Devices are whole disks on the host (not partitions).
        type: list
        elements: dict
        default: []
        suboptions:
          path:
            description:
              - The host block device, for example C(/dev/sda).
            type: str
            required: true
          weight:
            description:
              - I/O weight for this device, same scale as O(guests[].io_weight).
              - libvirt supports per-device weights on cgroup v1 only with CFQ; on a cgroup v1
                host with BFQ the module refuses them for domain guests.
              - On cgroup v2 with systemd the module refuses them for domain guests too, as libvirt
                hands them to systemd as C(IODeviceWeight), and libvirt 9.0 aborts doing so, at
                once for a running guest and at every start of a guest whose definition has one.
            type: int
          read_bytes_sec:
            description: Read throttle in bytes per second; C(0) removes the limit.
            type: int
          write_bytes_sec:
            description: Write throttle in bytes per second; C(0) removes the limit.
            type: int
          read_iops_sec:
            description: Read throttle in I/O operations per second; C(0) removes the limit.
            type: int
          write_iops_sec:
            description: Write throttle in I/O operations per second; C(0) removes the limit.
            type: int
  scope:
    description:
      - Which values of domain guests to change. C(both) changes the persistent definition and,
        when the guest runs, the running guest; C(live) only a running guest; C(config) only
        the definition (effective at the next start).
      - Process guests are always changed live.
    type: str
    choices: [both, live, config]
    default: both
  cgroup_version:
    description:
      - C(auto) uses each controller where the host has it (cgroup v1 first on hybrid hosts,
        as libvirt does). C(1) or C(2) insist on that version and fail, naming where the
        controller really is, when the host differs.
    type: str
    choices: [auto, '1', '2']
    default: auto
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - kvmsec.hardening.libvirt
notes:
  - Weights only act while a device is contended, and BFQ weights only on devices whose
    scheduler is C(bfq); the module warns when no block device uses BFQ.
  - On cgroup v2 without BFQ, C(io.weight) is enforced only by the kernel's iocost controller,
    which C(/sys/fs/cgroup/io.cost.qos) must enable per device; the module warns when it is
    enabled on none.
  - On cgroup v2 with systemd, libvirt applies a running domain's values to its machine scope
    through systemd's D-Bus API; on Debian 12 under SELinux that needs the C(kvmsec_libvirt)
    policy module of the kvmsec.hardening.selinux role.
seealso:
  - name: Guest resources in kvmsec.hardening
    description: Scale, mapping and the guest_resources role.
    link: https://example.invalid/kvmsec/hardening/docs/guest-resources.md
"""

EXAMPLES = r"""
- name: A database guest gets ten times the disk and CPU share of a batch guest
  kvmsec.hardening.cgroup_weight:
    guests:
      - name: db1
        io_weight: 1000
        cpu_weight: 1000
      - name: batch1
        io_weight: 100
        cpu_weight: 100
        devices:
          - path: /dev/sdb
            write_bytes_sec: 52428800

- name: Only the persistent definition of a stopped guest
  kvmsec.hardening.cgroup_weight:
    scope: config
    guests:
      - name: 0b2c3f5e-6f0a-4c55-9f0e-3f1d2e4a5b6c
        io_weight: 500

- name: A QEMU process started by hand, moved into its own cgroup
  kvmsec.hardening.cgroup_weight:
    guests:
      - name: low_prio
        target: process
        cgroup: kvmsec/low_prio
        io_weight: 10
        cpu_weight: 10
"""

RETURN = r"""
guests:
  description: What was read, planned and written for each guest.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Domain name or process guest name.
      type: str
    target:
      description: C(domain) or C(process).
      type: str
    pid:
      description: The QEMU process of a process guest.
      type: int
      returned: for process guests
    changed:
      description: Whether any value of this guest changed.
      type: bool
    settings:
      description:
        - One entry per value and scope. RV(guests[].settings[].after) is the host value
          written (or already there), RV(guests[].settings[].where) the cgroupfs file or the
          place in the domain XML.
      type: list
      elements: dict
      contains:
        key:
          description:
            - C(io_weight), C(cpu_weight), C(device_weight[PATH]), a throttle such as
              C(read_bytes_sec[PATH]), or C(cgroup io)/C(cgroup cpu) for the cgroup a process
              guest was moved into.
          type: str
        scope:
          description: C(live) (the running guest) or C(config) (the persistent definition).
          type: str
        where:
          description:
            - The cgroupfs file written for live values of local guests and process guests,
              C(domain XML (libvirt PARAMETER)) for persistent values, or
              C(libvirt PARAMETER (live)) when the cgroup cannot be seen from the host.
          type: str
        requested:
          description: The value asked for, on the module's scale (throttles in their unit).
          type: int
        before:
          description:
            - The host value found. In the definition, C(0) means not set. For a cgroup
              membership, the cgroup the process was in.
          type: raw
        after:
          description:
            - The host value written or already there, after mapping (for example C(cpu.shares)
              = weight × 10.24). For a cgroup membership, the cgroup directory.
          type: raw
        changed:
          description: Whether this value was (or in check mode would be) changed.
          type: bool
      sample:
        - key: io_weight
          scope: live
          where: /sys/fs/cgroup/blkio/machine/qemu-1-db1.libvirt-qemu/blkio.bfq.weight
          requested: 1000
          before: 100
          after: 1000
          changed: true
        - key: cpu_weight
          scope: config
          where: domain XML (libvirt cpu_shares)
          requested: 1000
          before: 0
          after: 10240
          changed: true
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kvmsec.hardening.plugins.module_utils import _cgroup_weight as core
from ansible_collections.kvmsec.hardening.plugins.module_utils._libvirt import URI_SPEC
from ansible_collections.kvmsec.hardening.plugins.module_utils._respawn import libvirt_connection, libvirt_errors
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import run


DEVICE_SPEC = dict(
    path=dict(type="str", required=True),
    weight=dict(type="int"),
    read_bytes_sec=dict(type="int"),
    write_bytes_sec=dict(type="int"),
    read_iops_sec=dict(type="int"),
    write_iops_sec=dict(type="int"),
)

GUEST_SPEC = dict(
    name=dict(type="str", required=True),
    target=dict(type="str", choices=["domain", "process"], default="domain"),
    pid=dict(type="int"),
    cgroup=dict(type="str"),
    io_weight=dict(type="int"),
    cpu_weight=dict(type="int"),
    devices=dict(type="list", elements="dict", default=[], options=DEVICE_SPEC),
)


def decide(module):
    guests = module.params["guests"]
    conn = None
    if any(guest["target"] == "domain" for guest in guests):
        conn = libvirt_connection(module, module.params["uri"])
    return core.decide(guests, core.Host(version=module.params["cgroup_version"]), module.params["scope"], conn)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            guests=dict(type="list", elements="dict", required=True, options=GUEST_SPEC),
            scope=dict(type="str", choices=["both", "live", "config"], default="both"),
            cgroup_version=dict(type="str", choices=["auto", "1", "2"], default="auto"),
            **URI_SPEC
        ),
        supports_check_mode=True,
    )
    run(module, lambda: decide(module), (core.CgroupWeightError, IOError, OSError) + libvirt_errors(),
        "cgroup_weight", always_diff=True)


if __name__ == "__main__":
    main()
