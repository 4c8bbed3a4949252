#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: audit_rules
short_description: Keep a file of audit rules in /etc/audit/rules.d and those rules loaded in the kernel
version_added: 0.1.0
description:
  - Writes the given audit rules to one file of C(/etc/audit/rules.d), which C(augenrules) merges
    into the rules the kernel gets at boot, and loads them now with C(augenrules --load) when the
    file changed or the kernel lacks one of them.
  - The kernel's rules are compared by key, since C(auditctl -l) prints rules in its own normalised
    form - every rule must carry a key (C(-k NAME) or C(-F key=NAME)), and a key with fewer loaded
    rules than the file has (a rule removed by hand with C(auditctl -W) or C(-d)) is a change.
  - A watch (C(-w PATH)) on a path that does not exist on the host is left out of the file and
    returned in RV(missing) - auditctl refuses such a watch, and augenrules would fail on it.
  - With O(immutable=true) a second file holds C(-e 2), which locks the rules in the kernel until
    the next boot. On a host whose rules are locked already, changed files are written and
    RV(reboot_required) says they apply after the next boot; the module never reboots.
  - A failed load puts the files back as they were and loads those again.
author: kvmsec.hardening developers (@kvmsec)
options:
  watches:
    description:
      - Files and directories to watch, written as C(-w PATH -p PERMISSIONS -k KEY) before O(rules).
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: The absolute path; a directory is watched with everything below it.
        type: path
        required: true
      permissions:
        description: Which accesses are recorded - any of C(r) read, C(w) write, C(x) execute, C(a) attribute change.
        type: str
        default: wa
      key:
        description: The key the records carry (1 to 31 letters, digits, C(_), C(.), C(:), C(-)).
        type: str
        required: true
  rules:
    description:
      - The rules, one per item, in C(auditctl) syntax - watches (C(-w PATH -p PERMS -k KEY)) and
        syscall rules (C(-a always,exit ... -k KEY)). Control rules (C(-D), C(-b), C(-e), C(-f))
        are refused; they belong to the distribution's own rules file.
    type: list
    elements: str
    default: []
  common_key:
    description:
      - A key every rule of the file also carries (C(-k KEY) added to each rule that lacks it), so
        that C(ausearch -k KEY) finds every record of these rules and C(auditctl -l | grep KEY) lists
        them all. Each rule keeps its own key too.
    type: str
  path:
    description: The rules file.
    type: path
    default: /etc/audit/rules.d/kvm.rules
  immutable:
    description:
      - Lock the loaded rules in the kernel (C(-e 2) in O(immutable_path)) - nobody, root included,
        can then change or remove them until the next boot, and changing them needs a reboot.
      - C(false) removes O(immutable_path) if it exists; a kernel already locked stays so until
        the next boot.
    type: bool
    default: false
  immutable_path:
    description: The file that holds C(-e 2); C(augenrules) reads the files in name order and C(-e) must come last.
    type: path
    default: /etc/audit/rules.d/99-kvmsec-immutable.rules
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
notes:
  - Needs C(auditd) running and C(augenrules) (package C(auditd) on Debian, C(audit) on EL).
seealso:
  - name: auditctl(8)
    description: The rule syntax.
    link: https://man7.org/linux/man-pages/man8/auditctl.8.html
"""

EXAMPLES = r"""
- name: Record changes to libvirt's configuration and images, and kernel module loading
  kvmsec.hardening.audit_rules:
    watches:
      - {path: /etc/libvirt, key: kvm-config}
      - {path: /var/lib/libvirt/images, key: kvm-images}
    rules:
      - -a always,exit -F arch=b64 -S init_module,finit_module,delete_module -k kvm-modules
    # auditctl -l | grep VIRT lists every one of them
    common_key: VIRT
"""

RETURN = r"""
path:
  description: The rules file.
  returned: always
  type: str
missing:
  description: Watches left out because their path does not exist on this host.
  returned: always
  type: list
  elements: str
  sample: ["-w /usr/libexec/qemu-kvm -p wa -k kvm-binaries"]
unloaded_keys:
  description: Keys of which the kernel had (check mode - has) fewer rules loaded than the file, with both counts.
  returned: always
  type: dict
  sample: {"kvm-config": {"wanted": 2, "loaded": 1}}
reboot_required:
  description: The rules are locked in the kernel (C(-e 2)); what changed applies after the next boot.
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kvmsec.hardening.plugins.module_utils import _audit_rules as core
from ansible_collections.kvmsec.hardening.plugins.module_utils._command import module_runner
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import run


def decide(module):
    params = module.params
    return core.decide(module_runner(module), params["watches"], params["rules"], params["path"],
                       params["immutable_path"], params["immutable"], common_key=params["common_key"])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            watches=dict(type="list", elements="dict", default=[], options=dict(
                path=dict(type="path", required=True),
                permissions=dict(type="str", default="wa"),
                key=dict(type="str", required=True, no_log=False),
            )),
            rules=dict(type="list", elements="str", default=[]),
            common_key=dict(type="str", no_log=False),
            path=dict(type="path", default="/etc/audit/rules.d/kvm.rules"),
            immutable=dict(type="bool", default=False),
            immutable_path=dict(type="path", default="/etc/audit/rules.d/99-kvmsec-immutable.rules"),
        ),
        supports_check_mode=True,
    )
    run(module, lambda: decide(module), (core.AuditRulesError,), "audit_rules")


if __name__ == "__main__":
    main()
