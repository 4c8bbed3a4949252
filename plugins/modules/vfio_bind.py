#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: vfio_bind
short_description: Give PCI devices to vfio-pci for passthrough, safely, and give them back
version_added: 0.1.0
description:
  - Binds PCI devices to C(vfio-pci) (O(state=bound)) with C(driver_override) and a probe, so
    a guest can be given them, or returns them to the host (O(state=unbound)) - to the driver
    they had before, which the module remembers, or else to the driver the kernel's default
    probe picks.
  - Every check runs before anything is written, and a request that fails one changes nothing.
    The IOMMU must be on; otherwise the module says which kernel argument or firmware setting
    is missing. Every other device of the device's IOMMU group must be bound in the same call,
    already be on a driver that leaves DMA to the group's owner (C(vfio-pci), C(pci-stub),
    C(pcieport)), or be a bridge no host driver holds; otherwise the group is not viable and the
    module lists its members. A member without a driver must be bound too.
  - Devices the running host needs are refused unless O(force=true) - the controllers behind
    mounted filesystems and swap (the root disk first), the network interfaces carrying the
    default route (through bridges, bonds and VLANs), the primary display (C(boot_vga)) and the
    devices behind the consoles. Bridges (PCI class 06) are always refused.
  - With O(persistent=true) a udev rule (C(/etc/udev/rules.d/61-kvmsec-vfio-pci.rules)) gives
    the device to C(vfio-pci) at every boot, before a host driver can use it, and takes it from
    a driver that got it first (initramfs, built-in). O(state=unbound) removes the device from
    that rule. The drivers to give back are kept in C(/var/lib/kvmsec/vfio_bind.json).
  - If any step fails, the devices and files already changed are put back.
author: kvmsec.hardening developers (@kvmsec)
options:
  devices:
    description:
      - PCI addresses in the form C(DDDD:BB:DD.F) (as C(lspci -D) shows them, for example
        C(0000:03:00.0)) or vendor:device ids C(VVVV:DDDD) (as C(lspci -nn) shows them, for
        example C(10de:1eb8)). An id selects every device that has it.
      - Every entry must match a device on the host.
    type: list
    elements: str
    required: true
  state:
    description:
      - C(bound) gives the devices to C(vfio-pci); C(unbound) returns them to the host.
    type: str
    choices: [bound, unbound]
    default: bound
  persistent:
    description:
      - Whether the devices also go to C(vfio-pci) at boot (a udev rule). C(false) removes them
        from the rule and leaves the binding until the next reboot.
      - Ignored with O(state=unbound), which always removes the devices from the rule.
    type: bool
    default: true
  force:
    description:
      - Bind devices the running host needs (mounted filesystems and swap, default route,
        primary display, consoles). Taking them usually makes the host unreachable.
      - Never overrides the IOMMU check, the IOMMU group check or the refusal of bridges.
      - A device already on C(vfio-pci) is not refused again, since the host no longer uses it.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - The diff shows each device's driver, C(driver_override) and boot-time owner before and
        after, and the udev rule file when it changes.
  platform:
    platforms: posix
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
requirements:
  - Linux with sysfs, the C(vfio-pci) kernel module, C(modprobe); C(udevadm) for O(persistent).
notes:
  - The IOMMU must be enabled at boot (on Intel C(intel_iommu=on)); the
    P(kvmsec.hardening.iommu_vfio#role) role sets the kernel arguments and calls this module.
  - On SELinux hosts the result reports the label of C(/dev/vfio/N), which should carry the type
    C(vfio_device_t) so that only guests libvirt labelled for the device can open it.
  - The kernel decides group viability the same way when a guest opens the group; the module
    checks it first so that a host driver is never left sharing a group with a guest.
seealso:
  - name: VFIO device passthrough in kvmsec.hardening
    description: Safety checks, persistence, IOMMU pt versus strict, the iommu_vfio role.
    link: https://example.invalid/kvmsec/hardening/docs/vfio.md
  - name: Linux VFIO documentation
    description: IOMMU groups and viability.
    link: https://docs.kernel.org/driver-api/vfio.html
"""

EXAMPLES = r"""
- name: Give the second GPU and its audio function to vfio-pci, now and at every boot
  kvmsec.hardening.vfio_bind:
    devices:
      - "0000:65:00.0"
      - "0000:65:00.1"

- name: Every device with this vendor:device id, until the next reboot only
  kvmsec.hardening.vfio_bind:
    devices:
      - "8086:10fb"
    persistent: false

- name: Give them back to the host drivers they had before
  kvmsec.hardening.vfio_bind:
    devices:
      - "0000:65:00.0"
      - "0000:65:00.1"
    state: unbound
"""

RETURN = r"""
devices:
  description: One entry per selected device, as it is after the call (predicted in check mode).
  returned: always
  type: list
  elements: dict
  contains:
    address:
      description: PCI address.
      type: str
      sample: "0000:00:03.0"
    id:
      description: vendor:device id.
      type: str
      sample: "1234:11e8"
    class:
      description: PCI class code.
      type: str
      sample: "0x00ff00"
    iommu_group:
      description: IOMMU group number; null when the IOMMU is off.
      type: int
      sample: 3
    group_members:
      description: Every device of the IOMMU group, with its driver and whether it is a bridge.
      type: list
      elements: dict
      sample:
        - address: "0000:00:03.0"
          id: "1234:11e8"
          driver: vfio-pci
          bridge: false
    previous_driver:
      description: The host driver remembered for O(state=unbound); null when it had none.
      type: str
      sample: bochs-drm
    driver_before:
      description: The device's driver before the call.
      type: str
    driver:
      description: The device's driver after the call.
      type: str
      sample: vfio-pci
    persistent:
      description: Whether the device goes to vfio-pci at boot.
      type: bool
    vfio_device:
      description: The group's VFIO device node, when the device is on vfio-pci.
      type: str
      sample: /dev/vfio/3
    selinux_label:
      description: SELinux label of RV(devices[].vfio_device); null without SELinux or node.
      type: str
      sample: system_u:object_r:vfio_device_t:s0
    changed:
      description: Whether this device's binding or persistence changed.
      type: bool
persistence_file:
  description: The udev rule file that binds persistent devices at boot.
  returned: always
  type: str
  sample: /etc/udev/rules.d/61-kvmsec-vfio-pci.rules
state_file:
  description: Where the drivers to give back are remembered.
  returned: always
  type: str
  sample: /var/lib/kvmsec/vfio_bind.json
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kvmsec.hardening.plugins.module_utils import _vfio_bind as core
from ansible_collections.kvmsec.hardening.plugins.module_utils._command import CommandError, module_runner
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import run


def decide(module):
    params = module.params
    tools = core.Tools(modprobe=module.get_bin_path("modprobe"), udevadm=module.get_bin_path("udevadm"))
    return core.decide(core.Host("/"), module_runner(module), tools, params["devices"], params["state"],
                       params["persistent"], params["force"])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            devices=dict(type="list", elements="str", required=True),
            state=dict(type="str", choices=["bound", "unbound"], default="bound"),
            persistent=dict(type="bool", default=True),
            force=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    run(module, lambda: decide(module), (core.VfioError, CommandError, IOError, OSError), "vfio_bind",
        always_diff=True)


if __name__ == "__main__":
    main()
