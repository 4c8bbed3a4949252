#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: apparmor_profiles
short_description: AppArmor profiles of the hypervisor in enforce mode, with local rules
version_added: 0.1.0
description:
  - Keeps AppArmor profiles such as libvirtd's and virt-aa-helper's loaded in B(enforce) mode,
    undoing the three ways a profile leaves it - a link in C(/etc/apparmor.d/disable/)
    (C(aa-disable)), a link in C(/etc/apparmor.d/force-complain/), and C(complain) among the
    flags of the profile's header (C(aa-complain)) - and loading it again when the kernel holds it
    in another mode.
  - Gives profiles local rules in a block the module owns in C(/etc/apparmor.d/local/NAME), the
    file the distribution's profiles include for site additions and package upgrades keep; lines
    outside the block stay. An empty list removes the block.
  - One call for every profile. A profile whose files changed is loaded again with
    C(apparmor_parser --replace); if that fails, every file and link is put back and loaded again.
  - Guests' own profiles (C(libvirt-UUID)) are kvmsec.hardening.svirt_label's.
author: kvmsec.hardening developers (@kvmsec)
options:
  enforce:
    description: Profile files in C(/etc/apparmor.d) to keep in enforce mode.
    type: list
    elements: str
    default: []
  local_rules:
    description:
      - Rules by profile file, for that profile's C(/etc/apparmor.d/local/) file. Each rule is
        one AppArmor rule with its trailing comma.
    type: dict
    default: {}
  read_directories:
    description:
      - Directories the profiles of O(read_directories_profiles) may read everything under
        (C(DIR/ r,) and C(DIR/** r,)), added to their local rules.
      - For guest images outside libvirt's default directories, give them to
        C(usr.lib.libvirt.virt-aa-helper) only - it then grants each guest its own images. Rules
        in C(abstractions/libvirt-qemu) would let every guest open every image.
    type: list
    elements: str
    default: []
  read_directories_profiles:
    description: The profile files O(read_directories) is for.
    type: list
    elements: str
    default: [usr.lib.libvirt.virt-aa-helper]
attributes:
  check_mode:
    support: full
    details: Check mode reads the profiles, links and the kernel's modes and returns the plan.
  diff_mode:
    support: full
    details: One diff per file written, and one of the profiles' loaded modes and links.
  platform:
    platforms: linux
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
seealso:
  - module: kvmsec.hardening.svirt_label
  - name: sVirt controls of kvmsec.hardening
    description: SVIRT-03, libvirt's own AppArmor profiles.
    link: https://example.invalid/kvmsec/hardening/docs/svirt.md
"""

EXAMPLES = r"""
- name: libvirt's profiles enforced, images under /srv/vms readable to virt-aa-helper
  kvmsec.hardening.apparmor_profiles:
    enforce: [usr.sbin.libvirtd, usr.lib.libvirt.virt-aa-helper]
    read_directories: [/srv/vms]
"""

RETURN = r"""
profiles:
  description: The profiles that were (check mode - would be) changed, with their mode before and what changed.
  returned: always
  type: list
  elements: dict
  sample: [{"file": "usr.sbin.libvirtd", "name": "libvirtd", "mode": "complain",
            "changes": ["complain flag removed", "reloaded"]}]
missing:
  description: Profile files of O(enforce) or O(local_rules) that do not exist on this host.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kvmsec.hardening.plugins.module_utils import _apparmor_profiles as core
from ansible_collections.kvmsec.hardening.plugins.module_utils._command import module_runner
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import run


def decide(module):
    params = module.params
    return core.decide(module_runner(module), params["enforce"], params["local_rules"], params["read_directories"],
                       params["read_directories_profiles"])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            enforce=dict(type="list", elements="str", default=[]),
            local_rules=dict(type="dict", default={}),
            read_directories=dict(type="list", elements="str", default=[]),
            read_directories_profiles=dict(type="list", elements="str",
                                           default=["usr.lib.libvirt.virt-aa-helper"]),
        ),
        supports_check_mode=True,
    )
    run(module, lambda: decide(module), (core.AppArmorError,), "apparmor_profiles")


if __name__ == "__main__":
    main()
