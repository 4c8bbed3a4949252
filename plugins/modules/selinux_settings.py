#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: selinux_settings
short_description: SELinux booleans and the file contexts of guest image directories, in one policy transaction
version_added: 0.1.0
description:
  - Sets SELinux booleans at boot and in the running kernel, and gives directories that hold guest
    images a file context rule C(PATH(/.*)?) with their type (C(virt_image_t)), then relabels what
    exists there with C(restorecon).
  - Every boolean and rule that differs goes into B(one) libsemanage transaction, which commits
    whole or not at all - one policy rebuild per run, where C(setsebool -P) or
    M(ansible.posix.seboolean) and M(community.general.sefcontext) pay one per boolean or rule (about
    11 seconds each on the emulated lab host). A boolean that differs only in the running kernel (set by
    C(setsebool) without C(-P)) is set there alone, without a rebuild.
  - Booleans this host's policy does not have are skipped and listed in RV(missing)
    (Debian's reference policy lacks several of the RHEL ones).
  - Check mode reads the policy store, the running kernel and C(restorecon -n), and returns what
    the run would change; nothing is written.
  - If a running-kernel value cannot be set after the transaction, the values already set and the
    transaction are put back. If C(restorecon) fails, the rules stay (they are what was asked for)
    and the next run relabels what is still labelled otherwise.
  - Needs the SELinux bindings of the distribution (C(python3-selinux), C(python3-semanage)); a
    module run by another Python re-runs itself under the system Python that has them.
author: kvmsec.hardening developers (@kvmsec)
options:
  booleans:
    description:
      - Boolean names and the values they must have, at boot and in the running kernel.
      - Booleans not listed are left alone.
    type: dict
    default: {}
  file_contexts:
    description:
      - Directories holding guest images outside C(/var/lib/libvirt/images), each given the rule
        C(PATH(/.*)?) for all file types. Rules of other directories are left alone.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description:
          - The directory, as an absolute path without spaces or regular expression characters
            (C(.) is fine). It need not exist yet.
        type: str
        required: true
      setype:
        description: The type of what is under it.
        type: str
        default: virt_image_t
  relabel:
    description:
      - Relabel (C(restorecon -R)) what exists in the directories of O(file_contexts) when a rule
        changed or a file carries another label than the rules give it.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    details: Check mode returns the plan; the store, the running kernel and the files are untouched.
  diff_mode:
    support: full
    details: The booleans (now and at boot), rules and relabels before and after.
  platform:
    platforms: linux
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
seealso:
  - module: kvmsec.hardening.selinux_module
  - name: SELinux controls of kvmsec.hardening
    description: KVM-SELINUX-02 (booleans) and KVM-SELINUX-03 (image directories).
    link: https://example.invalid/kvmsec/hardening/docs/selinux.md
"""

EXAMPLES = r"""
- name: Virtualization booleans off, except execmem for a TCG-only host
  kvmsec.hardening.selinux_settings:
    booleans:
      virt_use_nfs: false
      virt_use_samba: false
      virt_use_execmem: true

- name: Guest images under /srv/images, labelled for sVirt
  kvmsec.hardening.selinux_settings:
    file_contexts:
      - path: /srv/images
  register: selinux_settings_result

- name: Say how many files were relabelled
  ansible.builtin.debug:
    var: selinux_settings_result.relabelled_count
"""

RETURN = r"""
booleans:
  description: The booleans that were (check mode - would be) set, with their values before.
  returned: always
  type: list
  elements: dict
  sample: [{"name": "virt_use_nfs", "value": false, "runtime": true, "persistent": false}]
missing:
  description: Booleans of O(booleans) this host's policy does not have; left out.
  returned: always
  type: list
  elements: str
  sample: ["staff_use_svirt"]
file_contexts:
  description: Rules that were (would be) added or changed; C(before) is the type they gave before, or null.
  returned: always
  type: list
  elements: dict
  sample: [{"path": "/srv/images", "expression": "/srv/images(/.*)?", "setype": "virt_image_t", "before": null}]
relabelled:
  description:
    - The first 50 files C(restorecon) relabelled, with their types before and after. In check mode,
      what C(restorecon -n) would relabel, and the directories whose new rule relabels them (C(path)
      only).
  returned: always
  type: list
  elements: dict
  sample: [{"path": "/srv/images/db.qcow2", "before": "system_u:object_r:var_t:s0",
            "after": "system_u:object_r:virt_image_t:s0"}]
relabelled_count:
  description: How many lines C(restorecon) gave (check mode - the length of RV(relabelled) before the cut).
  returned: always
  type: int
transaction:
  description: Whether a policy store transaction was committed.
  returned: always
  type: bool
"""

import traceback

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kvmsec.hardening.plugins.module_utils import _selinux_settings as core
from ansible_collections.kvmsec.hardening.plugins.module_utils._command import module_runner
from ansible_collections.kvmsec.hardening.plugins.module_utils._respawn import respawn_or_fail
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import run

try:
    import selinux
    import semanage
except ImportError:
    BINDINGS_IMPORT_ERROR = traceback.format_exc()
else:
    BINDINGS_IMPORT_ERROR = None


def decide(module):
    params = module.params
    # the input's fault is named before anything is read from the host
    booleans = core.check_booleans(params["booleans"])
    file_contexts = core.check_file_contexts(params["file_contexts"])
    store = core.SemanageStore(semanage, selinux, write=not module.check_mode)
    return core.decide(store, module_runner(module), booleans, file_contexts, params["relabel"])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            booleans=dict(type="dict", default={}),
            file_contexts=dict(type="list", elements="dict", default=[], options=dict(
                path=dict(type="str", required=True),
                setype=dict(type="str", default="virt_image_t"),
            )),
            relabel=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    if BINDINGS_IMPORT_ERROR is not None:
        respawn_or_fail(module, "semanage", "the SELinux bindings (Debian: python3-selinux python3-semanage)",
                        BINDINGS_IMPORT_ERROR)
    run(module, lambda: decide(module), (core.SelinuxSettingsError,), "selinux_settings", always_diff=False)


if __name__ == "__main__":
    main()
