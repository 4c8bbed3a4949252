#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: svirt_label
short_description: Confine libvirt guests with their own sVirt label, and prove they have it
version_added: 0.1.0
description:
  - Sets the C(<seclabel>) of libvirt domains for the host's security driver - SELinux or
    AppArmor - and checks what every running guest really has.
  - SELinux - C(dynamic) lets libvirt pick a category pair at each start; C(static) fixes a
    label, given as a whole context (O(guests[].label)), as categories (O(guests[].categories))
    or allocated by the module - a pair no other domain on the host uses and none of
    O(reserved_categories), chosen from the domain's UUID so that check mode predicts it.
  - AppArmor - C(dynamic) confines the guest by the per-guest profile C(libvirt-UUID) that
    libvirt generates; a running guest whose profile is in complain mode is switched back to
    enforce mode.
  - Type C(none) (an unconfined guest) is refused unless O(allow_unconfined=true).
  - Collisions - two domains of the host that would share categories fail the module, naming
    both, before anything changes. Running guests sharing a pair that the requested labels
    resolve at their next start are reported as a warning.
  - Checks of every running guest - the label of its QEMU process, read from
    C(/proc/PID/attr/current), and the labels of its disk images (SELinux extended attribute
    C(security.selinux); with AppArmor, the profile's list of files) must match the domain.
    Mismatches are returned in RV(problems); images of guests requested as C(static) with
    relabelling are relabelled to the domain's image label.
  - A changed label applies to a running guest at its next start; RV(guests[].restart_required)
    says which guests need one. The module does not restart guests.
  - All guests are planned before anything is written; a failure while writing restores the
    definitions and image labels already changed.
author: kvmsec.hardening developers (@kvmsec)
requirements:
  - Root, to read the labels of QEMU processes and images.
options:
  guests:
    description:
      - The domains to label. Domains left out are still checked and reported.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Domain name or UUID.
        type: str
        required: true
      type:
        description:
          - C(dynamic) - libvirt chooses the label at every start (SELinux - a free category pair).
          - C(static) - the label of O(guests[].label) or O(guests[].categories), or a free pair
            the module allocates and keeps on later runs.
          - C(none) - unconfined; refused unless O(allow_unconfined=true).
        type: str
        choices: [dynamic, static, none]
        default: dynamic
      label:
        description:
          - For C(static) - the whole label. SELinux - a context with categories, for example
            C(system_u:system_r:svirt_t:s0:c12,c345); AppArmor - the name of a loaded profile.
        type: str
      categories:
        description:
          - For C(static) with SELinux - only the categories, for example C(c12,c345); the rest of
            the label is libvirt's base label for the domain type (C(system_u:system_r:svirt_t:s0)).
        type: str
      relabel:
        description:
          - Whether libvirt labels the guest's images with its image label when it starts. Only
            C(static) labels may turn it off (the images must then be labelled by hand).
        type: bool
        default: true
  reserved_categories:
    description:
      - Category pairs the allocation must not hand out, for example pairs that guests on
        other hosts of the fleet use, so that labels stay unique across migrations. Items are
        C(c1,c2), C(s0:c1,c2) or whole contexts.
      - A domain of this host that already sits on a reserved pair is moved when its request
        is C(static) without a label.
    type: list
    elements: str
    default: []
  allow_unconfined:
    description:
      - Accept C(none) for O(guests[].type). The guest then runs without confinement; libvirt
        refuses to start it anyway while qemu.conf has C(security_require_confined = 1).
    type: bool
    default: false
  model:
    description:
      - The security driver whose labels are managed. C(auto) takes the first of SELinux and
        AppArmor that libvirt on the host offers, and fails when it offers neither.
    type: str
    choices: [auto, selinux, apparmor]
    default: auto
  report_path:
    description:
      - Write the labels report here - JSON with the host name, the model, RV(domains),
        RV(collisions), RV(problems) and C(restart_required), the guests whose new label waits
        for their next start. Mode 0600 in a directory created 0700.
      - The report is output, not a setting - it is written only when its content differs and
        never counts as a change; check mode does not write it.
    type: path
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: The diff shows the C(<seclabel>) element of each domain whose definition changes.
  platform:
    platforms: posix
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - kvmsec.hardening.libvirt
notes:
  - libvirt does not reserve the categories of static labels, so a dynamic guest started later
    may be given a pair that a stopped static guest uses. Run the module after starting guests
    (the svirt role does, on every run) to find such collisions.
  - Processes and images are compared with the raw (untranslated) contexts.
seealso:
  - module: kvmsec.hardening.libvirt_conf
  - name: sVirt in kvmsec.hardening
    description: Labels, allocation, collisions and the isolation proof.
    link: https://example.invalid/kvmsec/hardening/docs/svirt.md
"""

EXAMPLES = r"""
- name: Tenant guests get fixed, unique category pairs; the others stay dynamic
  kvmsec.hardening.svirt_label:
    guests:
      - name: tenant-a-db
        type: static
        categories: c12,c345
      - name: tenant-b-web
        type: static
      - name: build01
    reserved_categories: "{{ fleet_svirt_pairs }}"
  register: svirt_label_result

- name: Show the pair allocated to tenant-b-web
  ansible.builtin.debug:
    msg: "{{ (svirt_label_result.guests | selectattr('name', 'eq', 'tenant-b-web') | first).label }}"

- name: Only check and report every guest of the host, keeping the report on the host
  kvmsec.hardening.svirt_label:
    report_path: /var/lib/kvmsec/svirt-labels.json
  register: svirt_label_report
  failed_when: svirt_label_report.problems | length > 0
"""

RETURN = r"""
model:
  description: The security driver whose labels were managed, C(selinux) or C(apparmor).
  returned: always
  type: str
guests:
  description: The requested guests, with their planned label.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Domain name.
      type: str
    uuid:
      description: Domain UUID.
      type: str
    type:
      description: C(dynamic), C(static) or C(none).
      type: str
    relabel:
      description: Whether libvirt relabels the images; null for C(none).
      type: bool
    label:
      description: The static label, or null for C(dynamic) and C(none).
      type: str
      sample: system_u:system_r:svirt_t:s0:c87,c903
    categories:
      description: The categories of the static SELinux label.
      type: str
      sample: c87,c903
    allocated:
      description: Whether the module allocated the label on this run.
      type: bool
    changed:
      description: Whether the definition, an image label or a profile mode changed.
      type: bool
    restart_required:
      description: The guest runs with another label than its definition now has.
      type: bool
    before:
      description: The C(<seclabel>) element before, empty when there was none.
      type: str
    after:
      description: The C(<seclabel>) element after.
      type: str
    image_fixes:
      description: Images relabelled to the guest's image label (C(path), C(before), C(after)).
      type: list
      elements: dict
    profile_enforced:
      description: The AppArmor profile reloaded from complain into enforce mode, else null.
      type: str
domains:
  description: Every domain of the host - the labels report.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Domain name.
      type: str
    uuid:
      description: Domain UUID.
      type: str
    active:
      description: Whether the domain runs.
      type: bool
    pid:
      description: The QEMU process, when running.
      type: int
    type:
      description: The seclabel type of its definition (after this run's changes).
      type: str
    label:
      description: The label it runs with, else the static label of its definition.
      type: str
    imagelabel:
      description: The image label of the running guest.
      type: str
    categories:
      description: The SELinux categories of RV(domains[].label).
      type: str
    process_label:
      description: The label of the QEMU process, from C(/proc/PID/attr/current).
      type: str
      sample: system_u:system_r:svirt_t:s0:c87,c903
    images:
      description:
        - Each disk image with its label, the expected label and a status - C(ok),
          C(mismatch), C(fixed) or C(skipped) (with a reason, for read-only, shareable and
          not-relabelled disks).
      type: list
      elements: dict
    problems:
      description: What is wrong with this domain's confinement.
      type: list
      elements: str
collisions:
  description: Running domains that share categories until one of them restarts.
  returned: always
  type: list
  elements: dict
  sample: [{"categories": "c7,c860", "domains": ["web1", "web2"], "where": "running"}]
problems:
  description: All problems of all domains, each prefixed with the domain name.
  returned: always
  type: list
  elements: str
report_written:
  description: Whether O(report_path) was written (its content differed).
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kvmsec.hardening.plugins.module_utils import _svirt_label as core
from ansible_collections.kvmsec.hardening.plugins.module_utils._command import CommandError, module_runner
from ansible_collections.kvmsec.hardening.plugins.module_utils._libvirt import URI_SPEC
from ansible_collections.kvmsec.hardening.plugins.module_utils._respawn import libvirt_connection, libvirt_errors
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import run


GUEST_SPEC = dict(
    name=dict(type="str", required=True),
    type=dict(type="str", choices=["dynamic", "static", "none"], default="dynamic"),
    label=dict(type="str"),
    categories=dict(type="str"),
    relabel=dict(type="bool", default=True),
)


def decide(module):
    params = module.params
    # bad requests are refused before libvirt is asked
    core.check_requests(params["guests"], None if params["model"] == "auto" else params["model"],
                        params["allow_unconfined"])
    return core.decide(libvirt_connection(module, params["uri"]), params, core.HostFiles(), module_runner(module))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            guests=dict(type="list", elements="dict", default=[], options=GUEST_SPEC),
            reserved_categories=dict(type="list", elements="str", default=[]),
            allow_unconfined=dict(type="bool", default=False),
            model=dict(type="str", choices=["auto", "selinux", "apparmor"], default="auto"),
            report_path=dict(type="path"),
            **URI_SPEC
        ),
        supports_check_mode=True,
    )
    run(module, lambda: decide(module), (core.SvirtError, CommandError, IOError, OSError) + libvirt_errors(),
        "svirt_label", always_diff=True)


if __name__ == "__main__":
    main()
