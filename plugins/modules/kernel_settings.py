#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: kernel_settings
short_description: Kernel settings of a KVM host - sysctl values, and modules kept from loading or given options
version_added: 0.1.0
description:
  - Sets sysctl values in one drop-in file that the module owns (O(sysctl_file)) and in the
    running kernel, in one call for all of them - one round trip per host, where a task per
    setting would pay one per setting.
  - Settings this kernel does not have are left out of the file and reported. Settings that a
    drop-in read after O(sysctl_file) at boot sets otherwise are reported too - the next boot
    would undo them.
  - Keeps kernel modules from loading (O(blacklist) - C(blacklist NAME) and
    C(install NAME /bin/false), so neither an alias nor C(modprobe NAME) loads them) and gives
    modules options (O(options)), in one modprobe.d file the module owns (O(modprobe_file)).
  - Never unloads a module and never reboots - a blacklisted module that is loaded is reported in
    RV(loaded). A loaded module running with other options is reloaded only with
    O(reload_modules=true) and only while nothing uses it (its use count is 0, so no guest runs
    on it); otherwise it is reported in RV(reload_required).
  - The files are written atomically; the running values are read back after they are set,
    and a failure puts back every file and value this run changed.
author: kvmsec.hardening developers (@kvmsec)
options:
  sysctl:
    description:
      - sysctl names, dotted as C(sysctl -a) prints them, and their values. The file holds
        exactly these (the supported ones), sorted.
    type: dict
    default: {}
  sysctl_file:
    description:
      - The drop-in the module owns. Its name decides when systemd-sysctl applies it - files
        sorting after it win.
      - Omitted, O(sysctl) is not managed.
    type: path
  blacklist:
    description: Kernel modules kept from loading.
    type: list
    elements: str
    default: []
  options:
    description:
      - "Module options, by module name, for example C({kvm_intel: {nested: 0}})."
    type: dict
    default: {}
  modprobe_file:
    description:
      - The modprobe.d file the module owns for O(blacklist) and O(options).
      - Omitted, neither is managed.
    type: path
  reload_modules:
    description:
      - Reload (C(modprobe -r), then C(modprobe)) a loaded module of O(options) whose running
        parameters differ, when nothing uses it. Check mode reports the reload as a change.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    details: Check mode reads the host and returns the plan; nothing is written.
  diff_mode:
    support: full
    details: One diff per changed file, and one of the running kernel's values.
  platform:
    platforms: linux
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
seealso:
  - name: Kernel controls of kvmsec.hardening
    description: The KVM-safe sysctl set and module blacklist, and their switches.
    link: https://example.invalid/kvmsec/hardening/docs/kernel.md
"""

EXAMPLES = r"""
- name: Restrict kernel pointers and ptrace, keep forwarding for libvirt's NAT networks
  kvmsec.hardening.kernel_settings:
    sysctl:
      kernel.kptr_restrict: 2
      kernel.yama.ptrace_scope: 2
      net.ipv4.ip_forward: 1
    sysctl_file: /etc/sysctl.d/99-zz-kvmsec-hardening.conf

- name: Keep unused protocols from loading, and nested virtualization off
  kvmsec.hardening.kernel_settings:
    blacklist: [dccp, sctp, rds, tipc]
    options:
      kvm_intel: {nested: 0}
    modprobe_file: /etc/modprobe.d/kvmsec-hardening.conf
    reload_modules: true
  register: kernel_settings_result

- name: Say which module waits for a reload
  ansible.builtin.debug:
    var: kernel_settings_result.reload_required
"""

RETURN = r"""
live:
  description: The running kernel's values that were (check mode - would be) changed.
  returned: always
  type: list
  elements: dict
  sample: [{"name": "kernel.kptr_restrict", "before": "0", "after": "2"}]
files:
  description: The files that were (would be) written.
  returned: always
  type: list
  elements: str
  sample: ["/etc/sysctl.d/99-zz-kvmsec-hardening.conf"]
missing:
  description: Settings of O(sysctl) this kernel does not have; left out.
  returned: always
  type: list
  elements: str
overridden:
  description: Settings a drop-in read after O(sysctl_file) sets to another value at boot.
  returned: always
  type: list
  elements: dict
  sample: [{"name": "net.ipv4.ip_forward", "file": "/etc/sysctl.d/99-custom.conf", "value": "0"}]
loaded:
  description: Modules of O(blacklist) that are loaded now; they stay loaded until unloaded.
  returned: always
  type: list
  elements: str
reload_required:
  description:
    - Loaded modules whose running parameter differs from O(options) and that this run does not
      reload (not allowed, or in use - C(users)).
  returned: always
  type: list
  elements: dict
  sample: [{"module": "kvm_intel", "parameter": "nested", "running": "Y", "configured": "0", "users": 2}]
reloaded:
  description: Modules that were (check mode - would be) reloaded, with the parameter that changed.
  returned: always
  type: list
  elements: dict
  sample: [{"module": "kvm_amd", "parameter": "nested", "running": "1", "configured": "0"}]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kvmsec.hardening.plugins.module_utils import _kernel_settings as core
from ansible_collections.kvmsec.hardening.plugins.module_utils._command import module_runner
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import run


def decide(module):
    params = module.params
    return core.decide(module_runner(module), "kernel_settings", params["sysctl"], params["sysctl_file"],
                       params["blacklist"], params["options"], params["modprobe_file"], params["reload_modules"])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            sysctl=dict(type="dict", default={}),
            sysctl_file=dict(type="path"),
            blacklist=dict(type="list", elements="str", default=[]),
            options=dict(type="dict", default={}),
            modprobe_file=dict(type="path"),
            reload_modules=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    run(module, lambda: decide(module), (core.KernelError, IOError, OSError), "kernel_settings", always_diff=True)


if __name__ == "__main__":
    main()
