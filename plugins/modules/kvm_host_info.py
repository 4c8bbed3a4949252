#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: kvm_host_info
short_description: Facts about a KVM/libvirt virtualization host
version_added: 0.1.0
description:
  - Reads, from C(/proc) and C(/sys), what later hardening roles need to know about a
    virtualization host - CPU vendor and virtualization flags, C(/dev/kvm), the active Linux
    security modules and the SELinux mode, the cgroup version, IOMMU groups, CPU vulnerability
    mitigation state, where QEMU and the libvirt daemon are installed, the kernel's release and
    security-relevant configuration options, UEFI Secure Boot, kernel lockdown, module signature
    enforcement and nested virtualization.
  - Optionally fails with the reasons when the host cannot run KVM guests.
  - Optionally says which of a list of packages are not installed, so that a caller installs only
    those, and pays no package manager run when none is missing.
  - Changes nothing on the host.
author: kvmsec.hardening developers (@kvmsec)
options:
  require_kvm_host:
    description:
      - Fail, listing every reason, when the host is not a usable KVM/libvirt host.
      - Not applied while a package of O(packages) is missing - the host cannot be usable before
        its packages are installed; the caller installs RV(missing) and asks again.
    type: bool
    default: false
  allow_emulation:
    description:
      - Accept a host without hardware virtualization (guests then run under QEMU TCG).
      - Meant for labs and CI hosts, not for production hypervisors.
    type: bool
    default: false
  services:
    description:
      - systemd units whose state to read, for example C(libvirtd) - returned in RV(services).
      - Read with C(systemctl show); on a host without systemctl their states are null.
    type: list
    elements: str
    default: []
  packages:
    description:
      - Packages the host should have; those not installed are returned in RV(missing).
      - Read from dpkg's status file on Debian-family hosts and with C(rpm -q) on rpm hosts; on a
        host with neither, every package counts as missing.
    type: list
    elements: str
    default: []
extends_documentation_fragment:
  - kvmsec.hardening.info_module
"""

EXAMPLES = r"""
- name: Read the host's virtualization facts and insist on a real KVM host
  kvmsec.hardening.kvm_host_info:
    require_kvm_host: true
  register: kvm_host_info_result

- name: Show the SELinux mode and the cgroup version
  ansible.builtin.debug:
    msg: "{{ kvm_host_info_result.host.selinux }} / cgroup v{{ kvm_host_info_result.host.cgroup_version }}"
"""

RETURN = r"""
host:
  description: The host's virtualization facts.
  returned: always
  type: dict
  contains:
    cpu:
      description:
        - CPU vendor (C(intel), C(amd)), model, hardware virtualization, the security-relevant
          flags (C(security_flags)) and all flags of C(/proc/cpuinfo) (C(flags)).
      type: dict
      sample: {"vendor": "intel", "model": "Intel Xeon", "hw_virtualization": ["intel"],
               "security_flags": ["smap", "smep", "umip"]}
    kvm_device:
      description: Whether C(/dev/kvm) exists.
      type: bool
    kernel_cmdline:
      description: The running kernel's command line, split into words.
      type: list
      elements: str
    lsms:
      description: Active Linux security modules, from C(/sys/kernel/security/lsm).
      type: list
      elements: str
      sample: ["lockdown", "capability", "selinux"]
    selinux:
      description: C(enforcing), C(permissive) or C(disabled).
      type: str
    apparmor:
      description: Whether AppArmor is the active and enabled security module.
      type: bool
    cgroup_version:
      description: 2 when the unified hierarchy is mounted at C(/sys/fs/cgroup), else 1.
      type: int
    iommu_groups:
      description: Number of IOMMU groups; 0 means the IOMMU is off.
      type: int
    vulnerabilities:
      description: Content of C(/sys/devices/system/cpu/vulnerabilities/*), by name.
      type: dict
    qemu_binary:
      description: Path of the QEMU system emulator, or null.
      type: str
    libvirtd_binary:
      description: Path of the libvirt daemon (C(libvirtd) or C(virtqemud)), or null.
      type: str
    kernel_release:
      description: The running kernel's release (C(uname -r)).
      type: str
    kernel_config_path:
      description:
        - Where the running kernel's configuration was read - C(/boot/config-RELEASE), else
          C(/proc/config.gz); null when neither is readable.
      type: str
    kernel_config:
      description:
        - The configuration options the kernel controls read (docs/kernel.md) - C(y), C(m), a
          value, or C(n) for "is not set"; options the file does not mention are left out.
      type: dict
      sample: {"CONFIG_KVM": "m", "CONFIG_STRICT_KERNEL_RWX": "y", "CONFIG_KVM_AMD": "n"}
    uefi:
      description: Whether the host booted through UEFI (C(/sys/firmware/efi) exists).
      type: bool
    secure_boot:
      description: Whether UEFI Secure Boot is on; null on a host that did not boot through UEFI.
      type: bool
    lockdown:
      description: The kernel lockdown mode - C(none), C(integrity) or C(confidentiality); null without the lockdown LSM.
      type: str
    module_sig_enforce:
      description: Whether the kernel refuses unsigned modules (C(module.sig_enforce)); null when it cannot say.
      type: bool
    nested:
      description: The nested virtualization parameter of the loaded KVM modules, by module.
      type: dict
      sample: {"kvm_intel": false}
services:
  description:
    - The units of O(services), by the name given - C(enabled) (the unit file state is
      C(enabled)), C(active) (the unit runs) and C(masked) (the unit file state is C(masked) -
      nothing can start it); null for all three when systemd cannot say.
  returned: always
  type: dict
  sample: {"libvirtd": {"enabled": true, "active": true, "masked": false}}
missing:
  description: The packages of O(packages) that are not installed, in their order.
  returned: always
  type: list
  elements: str
  sample: ["qemu-utils"]
problems:
  description: Why the host is not a usable KVM host; empty when it is.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kvmsec.hardening.plugins.module_utils import _kvm_host_info
from ansible_collections.kvmsec.hardening.plugins.module_utils._command import module_runner


def main():
    module = AnsibleModule(
        argument_spec=dict(
            require_kvm_host=dict(type="bool", default=False),
            allow_emulation=dict(type="bool", default=False),
            services=dict(type="list", elements="str", default=[]),
            packages=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    run = module_runner(module)
    missing = _kvm_host_info.missing_packages(module.params["packages"], run=run,
                                              rpm=module.get_bin_path("rpm"))
    facts = _kvm_host_info.gather()
    problems = _kvm_host_info.readiness_problems(facts, module.params["allow_emulation"])
    if problems and module.params["require_kvm_host"] and not missing:
        module.fail_json(msg="This host cannot run KVM guests: " + "; ".join(problems),
                         host=facts, problems=problems, missing=missing)
    systemctl = module.get_bin_path("systemctl")
    services = _kvm_host_info.service_states(module.params["services"], run, systemctl)
    module.exit_json(changed=False, host=facts, services=services, problems=problems,
                     missing=missing)


if __name__ == "__main__":
    main()
