#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: kernel_arguments
short_description: Kernel command-line arguments of a KVM host, through its boot loader, by key
version_added: 0.1.0
description:
  - The one boot loader path of the collection - the C(kernel), C(iommu_vfio) and C(selinux)
    roles all set their arguments through it.
  - Adds O(arguments) and removes O(absent) by key. On GRUB hosts (Debian, Ubuntu) the
    collection's arguments are kept in one drop-in the module owns (O(dropin)), one line per
    O(owner) - each call replaces its owner's line with exactly O(arguments), so several roles
    share the file, a word a role no longer asks for goes, and an argument another owner's line
    undoes fails the call naming both.
  - A word that undoes the arguments in C(/etc/default/grub) or another drop-in of
    C(/etc/default/grub.d) (C(mitigations=off) added by hand) is removed there, so the kernel
    sees the baseline's value last. A line too involved to rewrite safely (a continued, escaped
    or computed value) is left as written and named in RV(unedited) and a warning.
    C(update-grub) then regenerates the configuration.
  - On EL hosts, C(grubby --update-kernel=ALL) edits every installed kernel's entry.
  - Never reboots. The running command line (C(/proc/cmdline)) is compared with the arguments -
    what it lacks is in RV(missing), what undoes them in RV(unwanted), and RV(reboot_required)
    says a reboot would bring them.
  - A kernel its boot loader did not start (no C(BOOT_IMAGE=) on its command line - a kernel
    started directly, as QEMU C(-kernel) does) gets nothing written under O(bootloader=auto) - a
    reboot would not bring the arguments. RV(not_managed_because) and a warning say so.
  - Files are written atomically; when the same call runs C(update-grub) and it fails, they are
    put back. With O(regenerate=false) they stay written for the later call that regenerates.
author: kvmsec.hardening developers (@kvmsec)
options:
  owner:
    description:
      - Whose arguments these are (a role's name) - the drop-in's line this call replaces.
    type: str
    default: kvmsec.hardening
  arguments:
    description:
      - Arguments the kernel must have, C(KEY) or C(KEY=VALUE). An argument replaces any other
        value of its key (dashes and underscores in a key are the same, as to the kernel).
    type: list
    elements: str
    default: []
  absent:
    description:
      - Arguments the kernel must not have - C(KEY) removes every value of that key,
        C(KEY=VALUE) only that value (C(mitigations=off), not C(mitigations=auto)).
    type: list
    elements: str
    default: []
  bootloader:
    description:
      - C(auto) - grubby where installed, else GRUB (C(update-grub) and C(/etc/default/grub)),
        and only for a kernel a boot loader started; else none.
      - C(none) - write nothing; only compare the running command line.
    type: str
    choices: [auto, grub, grubby, none]
    default: auto
  dropin:
    description:
      - The GRUB drop-in the module owns, a C(.cfg) file in C(/etc/default/grub.d). Its name
        sorts after other drop-ins, so that none sets the line anew after it.
    type: path
    default: /etc/default/grub.d/99-zz-kvmsec-hardening.cfg
  regenerate:
    description:
      - Run C(update-grub) when a file changed or the generated configuration lacks the
        arguments. With C(false) the files are written and RV(regenerate_required) says a later
        call (a handler, once per run) must regenerate.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    details: Check mode reads the host (C(grubby --info) on EL) and returns the plan; nothing is written or regenerated.
  diff_mode:
    support: full
    details: One diff per changed file; for grubby, the arguments removed and added.
  platform:
    platforms: linux
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
seealso:
  - name: Kernel controls of kvmsec.hardening
    description: The kernel arguments of the baseline, reboot consent and the lab's boot proof.
    link: https://example.invalid/kvmsec/hardening/docs/kernel.md
"""

EXAMPLES = r"""
- name: Mitigations on, SMT off where the CPU needs it, no per-bug mitigation turned off
  kvmsec.hardening.kernel_arguments:
    owner: kernel
    arguments: ["mitigations=auto,nosmt"]
    absent: [nospectre_v2, spectre_v2=off, mds=off]
  register: kernel_arguments_result

- name: Say what a reboot would bring
  ansible.builtin.debug:
    msg: "reboot for {{ kernel_arguments_result.missing | join(' ') }}"
  when: kernel_arguments_result.reboot_required

- name: Write the IOMMU arguments now, regenerate GRUB once later
  kvmsec.hardening.kernel_arguments:
    owner: iommu_vfio
    arguments: [intel_iommu=on, iommu=pt]
    absent: [iommu.strict, iommu.passthrough]
    regenerate: false
"""

RETURN = r"""
bootloader:
  description: The tooling used - C(grub), C(grubby) or C(none).
  returned: always
  type: str
  sample: grub
not_managed_because:
  description: Why nothing is written, when RV(bootloader) is C(none); null otherwise.
  returned: always
  type: str
  sample: the running kernel was not started by a boot loader (no BOOT_IMAGE= on its command line)
files:
  description: The files that were (check mode - would be) written.
  returned: always
  type: list
  elements: str
  sample: ["/etc/default/grub", "/etc/default/grub.d/99-zz-kvmsec-hardening.cfg"]
unedited:
  description: Lines that set the command line in a way the module does not rewrite and that undo the arguments; no reboot helps until they are edited.
  returned: always
  type: list
  elements: str
  sample: ["/etc/default/grub line 12"]
regenerated:
  description: Whether C(update-grub) ran (would run).
  returned: always
  type: bool
regenerate_required:
  description: With O(regenerate=false), whether the GRUB configuration still has to be regenerated.
  returned: always
  type: bool
grubby_added:
  description: Arguments grubby added (would add) to every kernel.
  returned: always
  type: list
  elements: str
grubby_removed:
  description: Arguments grubby removed (would remove) from every kernel.
  returned: always
  type: list
  elements: str
running:
  description: The running kernel's command line, word by word.
  returned: always
  type: list
  elements: str
configured:
  description: The arguments the next boot gets by default (GRUB's first entry, or grubby's default kernel), without the image and root device.
  returned: always
  type: list
  elements: str
missing:
  description: Arguments of O(arguments) the running kernel lacks (or runs with another value).
  returned: always
  type: list
  elements: str
  sample: ["mitigations=auto,nosmt"]
unwanted:
  description: Words of the running command line that O(absent) or O(arguments) undo.
  returned: always
  type: list
  elements: str
  sample: ["mitigations=off", "nosmap"]
reboot_required:
  description: The running kernel falls short and the boot loader now gives (check mode - would give) the next boot the arguments.
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kvmsec.hardening.plugins.module_utils import _kernel_arguments as core
from ansible_collections.kvmsec.hardening.plugins.module_utils._command import CommandError, module_runner
from ansible_collections.kvmsec.hardening.plugins.module_utils._files import NotRestored
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import run


def main():
    module = AnsibleModule(
        argument_spec=dict(
            owner=dict(type="str", default="kvmsec.hardening"),
            arguments=dict(type="list", elements="str", default=[]),
            absent=dict(type="list", elements="str", default=[]),
            bootloader=dict(type="str", default="auto", choices=list(core.BOOTLOADERS)),
            dropin=dict(type="path", default=core.DROPIN),
            regenerate=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    params = module.params
    run(module, lambda: core.decide(module_runner(module), params["owner"], params["arguments"], params["absent"],
                                    params["bootloader"], params["dropin"], params["regenerate"]),
        (core.ArgumentError, CommandError, NotRestored, IOError, OSError), "kernel_arguments")


if __name__ == "__main__":
    main()
