#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: selinux_module
short_description: Install SELinux local policy modules from source, versioned and in one transaction
version_added: 0.1.0
description:
  - Installs, upgrades, enables, disables and removes SELinux policy modules. Sources are C(.te)
    type enforcement files (with optional C(.fc) file contexts), C(.cil) files, prebuilt C(.pp)
    policy packages, or AVC/USER_AVC denial records, from which the module writes a C(.te) that
    allows exactly what was denied, as C(audit2allow -M) does.
  - Every source is compiled (C(checkmodule), C(semodule_package)) before anything changes; a
    compile error fails with the compiler's message and changes nothing. A C(.cil) source is
    checked against the syntax rules of libsepol's CIL parser (parentheses, tokens, quoted
    strings), which C(semodule) otherwise applies only inside the transaction.
  - Bad input is refused before anything about the host is looked at, in check mode as in a real
    run - a source file that cannot be read, an empty source, CIL that does not parse, a
    O(state_dir) that is not a directory or cannot be created.
  - All modules of one call go to C(semodule) as one command, which the policy store commits as
    one transaction - one policy rebuild for the whole call, and a failure of any module leaves
    the policy exactly as it was.
  - A module whose installed checksum (the SHA-256 of its CIL, as C(semodule --checksum)
    reports it) already equals the compiled source causes no transaction at all.
  - Every installed version is kept on the host under O(state_dir) (at most O(keep_versions) per
    module); O(rollback=true) reinstalls the version installed before the current one.
author: kvmsec.hardening developers (@kvmsec)
requirements:
  - SELinux policy tools on the target - C(semodule) (policycoreutils), C(checkmodule)
    (checkpolicy) and C(semodule_package) (Debian C(semodule-utils)) for C(.te) sources.
  - The SELinux Python bindings (Debian C(python3-selinux), RHEL C(python3-libselinux)). When the
    module's interpreter lacks them, the module re-runs itself under the system Python that has
    them.
options:
  name:
    description:
      - Name of one module to manage. For a C(.te) it must equal the name in its C(module)
        statement; for a C(.pp) the name inside the package.
      - Use O(modules) to manage several modules in one transaction.
    type: str
  src:
    description:
      - Path on the managed host of a C(.te), C(.cil) or C(.pp) file. The format comes from the
        extension unless O(format) is set.
    type: path
  content:
    description:
      - The source text of a C(.te) or C(.cil) module (for example from a C(lookup('file', ...))).
        The format is recognised from the text unless O(format) is set.
    type: str
  avc:
    description:
      - AVC and USER_AVC denial records (audit log lines or C(ausearch -m AVC,USER_AVC) output).
        The module generates a C(.te) allowing each denied access, returns it in
        RV(modules[].generated) and shows it with C(--diff). Other records are ignored.
      - Denials that a boolean would allow are better fixed with that boolean; review the
        generated source before installing it on a fleet (check mode shows it).
    type: str
  format:
    description:
      - The format of O(src) or O(content), when the file name or text does not tell.
    type: str
    choices: [te, cil, pp]
  fc_src:
    description: Path on the managed host of the C(.fc) file contexts of a C(.te) source.
    type: path
  fc_content:
    description: The C(.fc) file contexts of a C(.te) source, as text.
    type: str
  if_src:
    description:
      - Path on the managed host of the C(.if) interface file of a C(.te) source. It is kept
        with the version (other modules built against the reference policy use it); it is not
        compiled, so it does not change the module's checksum.
    type: path
  if_content:
    description: The C(.if) interface file of a C(.te) source, as text. See O(if_src).
    type: str
  state:
    description:
      - V(present) installs the source (or the rolled back version) and makes sure the module is
        enabled.
      - V(enabled) and V(disabled) install the source when one is given, then enable or disable
        the module; without a source they act on the module already installed (at any priority,
        for example a module of the distribution's policy).
      - V(absent) removes the module installed at O(priority). Its kept versions stay, so
        O(rollback=true) can reinstall the last one.
      - With O(modules), each entry has its own state and this one is not used.
    type: str
    choices: [present, absent, enabled, disabled]
    default: present
  rollback:
    description:
      - Reinstall the version installed before the current one, from O(state_dir), in one
        transaction. When the module is not installed, reinstall the last version kept.
      - Each rollback steps one version further back, so it reports a change every time it runs.
      - With O(modules), each entry has its own rollback and this one is not used.
    type: bool
    default: false
  modules:
    description:
      - Several modules, installed, changed and removed in one policy transaction. Each entry
        takes the options of a single module. Mutually exclusive with O(name).
    type: list
    elements: dict
    suboptions:
      name:
        description: Name of the module. See O(name).
        type: str
        required: true
      src:
        description: Path on the managed host of the source. See O(src).
        type: path
      content:
        description: Source text. See O(content).
        type: str
      avc:
        description: Denial records to generate the module from. See O(avc).
        type: str
      format:
        description: Format of the source. See O(format).
        type: str
        choices: [te, cil, pp]
      fc_src:
        description: Path of the C(.fc) file contexts. See O(fc_src).
        type: path
      fc_content:
        description: File contexts as text. See O(fc_content).
        type: str
      if_src:
        description: Path of the C(.if) interface file. See O(if_src).
        type: path
      if_content:
        description: Interface file as text. See O(if_content).
        type: str
      state:
        description: Wanted state of this module. See O(state).
        type: str
        choices: [present, absent, enabled, disabled]
        default: present
      rollback:
        description: Reinstall the previous version of this module. See O(rollback).
        type: bool
        default: false
  priority:
    description:
      - Policy store priority the modules are installed at and removed from. A module at a higher
        priority overrides the same name at a lower one; the distribution's modules use C(100).
    type: int
    default: 400
  state_dir:
    description:
      - Directory on the managed host that keeps every installed version. It is created when
        missing; a path that is not a directory, or cannot be created or written, is refused.
    type: path
    default: /var/lib/kvmsec/selinux_modules
  keep_versions:
    description:
      - How many versions to keep per module (at least C(2)); the oldest go first, never the
        installed one.
    type: int
    default: 5
attributes:
  check_mode:
    support: full
    details:
      - Sources are compiled in a temporary directory; neither the policy nor O(state_dir) change.
      - Input the real run would refuse (unreadable or empty sources, CIL that does not parse, an
        unusable O(state_dir)) fails check mode the same way.
  diff_mode:
    support: full
    details: The managed modules as the store lists them before and after, and the generated source of O(avc) input.
  platform:
    platforms: posix
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
notes:
  - One policy transaction rebuilds the whole policy, which takes from seconds to more than half
    a minute. List all modules of a host in one task rather than looping over this module.
  - The host needs an installed SELinux policy. SELinux may be disabled at runtime (the store is
    changed and the modules load with the policy at the next boot), but a host without any
    policy fails with an error saying what to install.
  - C(.te) sources are compiled with C(checkmodule) directly, without the reference policy's
    M4 macros; use plain rules with a C(require) block, as C(audit2allow) writes them.
seealso:
  - name: SELinux in kvmsec.hardening
    description: Local modules, booleans, file contexts and the selinux role.
    link: https://example.invalid/kvmsec/hardening/docs/selinux.md
  - module: kvmsec.hardening.kvm_host_info
"""

EXAMPLES = r"""
- name: Let libvirt start guests under enforcing on Debian 12
  kvmsec.hardening.selinux_module:
    name: kvmsec_libvirt
    content: "{{ lookup('ansible.builtin.file', 'kvmsec_libvirt.te') }}"

- name: Three modules in one policy transaction
  kvmsec.hardening.selinux_module:
    modules:
      - name: site_backup
        src: /etc/kvmsec/selinux/site_backup.te
        fc_src: /etc/kvmsec/selinux/site_backup.fc
      - name: site_monitoring
        src: /etc/kvmsec/selinux/site_monitoring.cil
      - name: old_workaround
        state: absent

- name: Collect today's denials of libvirt and its guests
  ansible.builtin.command: ausearch --input-logs -m AVC,USER_AVC -ts today -c rpc-libvirtd
  register: denials
  changed_when: false
  failed_when: denials.rc not in [0, 1]

- name: Review the module those denials call for (nothing is installed in check mode)
  kvmsec.hardening.selinux_module:
    name: local_libvirt
    avc: "{{ denials.stdout }}"
  check_mode: true
  diff: true
  register: proposal

- name: Roll the module back to the version installed before
  kvmsec.hardening.selinux_module:
    name: site_backup
    rollback: true

- name: Disable a module of the distribution's policy
  kvmsec.hardening.selinux_module:
    name: games
    state: disabled
"""

RETURN = r"""
modules:
  description: One entry per managed module, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Module name.
      type: str
      sample: kvmsec_libvirt
    state:
      description: The state asked for.
      type: str
      sample: present
    priority:
      description: The priority managed.
      type: int
      sample: 400
    changed:
      description: Whether this module changed.
      type: bool
    actions:
      description: What the transaction did to it - C(install), C(upgrade), C(rollback), C(remove), C(enable), C(disable).
      type: list
      elements: str
      sample: [upgrade]
    before:
      description: The module at O(priority) before, as the policy store listed it, or C(null).
      type: dict
      sample: {priority: 400, format: pp, enabled: true, sha256: 1db4507b92be48752aff526187f5f2ab1d968f6a25a06f2bbd4aaf1d9198becf}
    after:
      description: The module at O(priority) afterwards (predicted in check mode), or C(null).
      type: dict
      sample: {priority: 400, format: pp, enabled: true, sha256: 5c0e4b7aa2c1d8c2c3a1b4b8f25f0c8e63a1de0a4b2f9e9e8c1b2d3e4f5a6b7c}
    sha256:
      description: Checksum of the compiled source (the SHA-256 of its CIL).
      type: str
      returned: when a source was given
    source_format:
      description: Where the module came from - C(te), C(cil), C(pp) or C(avc).
      type: str
      returned: when a source was given
    generated:
      description: The C(.te) written from the O(avc) denials.
      type: str
      returned: for O(avc) input
      sample: |
        module local_libvirt 1.0;

        require {
            type virtd_t;
            class capability2 bpf;
        }

        #============= virtd_t ==============
        allow virtd_t self:capability2 bpf;
    denials:
      description: How many distinct denied accesses (source, target, class) the records held.
      type: int
      returned: for O(avc) input
    versions:
      description: The versions kept in O(state_dir), oldest first.
      type: list
      elements: dict
      contains:
        sha256:
          description: Checksum of the version.
          type: str
        format:
          description: C(pp) or C(cil), as installed.
          type: str
        origin:
          description: The source it was built from - C(te), C(cil), C(pp) or C(avc).
          type: str
        added:
          description: When the version was first installed (seconds since the epoch).
          type: int
        installed:
          description: When it was last installed (seconds since the epoch).
          type: int
        current:
          description: Whether this version is installed now.
          type: bool
        rollback_target:
          description: Whether O(rollback=true) would reinstall this version.
          type: bool
transaction:
  description: Whether a policy store transaction was committed (check mode - always C(false)).
  returned: always
  type: bool
semodule_command:
  description: The one C(semodule) command run, or C(null) when nothing needed a transaction.
  returned: always
  type: list
  elements: str
  sample: [/usr/sbin/semodule, -X, '400', -i, /var/lib/kvmsec/selinux_modules/a/5c0e.../a.pp, -e, a, -d, b]
"""

import os
import traceback

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kvmsec.hardening.plugins.module_utils import _selinux_module as core
from ansible_collections.kvmsec.hardening.plugins.module_utils._respawn import respawn_or_fail
from ansible_collections.kvmsec.hardening.plugins.module_utils._command import CommandError, module_runner
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import run

try:
    import selinux
except ImportError:
    selinux = None
    SELINUX_IMPORT_ERROR = traceback.format_exc()
else:
    SELINUX_IMPORT_ERROR = None

STATES = ["present", "absent", "enabled", "disabled"]
FORMATS = ["te", "cil", "pp"]

MODULE_OPTIONS = dict(
    src=dict(type="path"),
    content=dict(type="str"),
    avc=dict(type="str"),
    format=dict(type="str", choices=FORMATS),
    fc_src=dict(type="path"),
    fc_content=dict(type="str"),
    if_src=dict(type="path"),
    if_content=dict(type="str"),
    state=dict(type="str", choices=STATES, default="present"),
    rollback=dict(type="bool", default=False),
)
ENTRY_SPEC = dict(MODULE_OPTIONS, name=dict(type="str", required=True))
# options of a single module that would silently be ignored next to a list
SINGLE_ONLY = ["src", "content", "avc", "format", "fc_src", "fc_content", "if_src", "if_content"]


def host_policy():
    """The installed policy: core.Host, or SelinuxModuleError saying what the host lacks."""
    rc, policy_type = selinux.selinux_getpolicytype()
    if rc != 0 or not policy_type:
        raise core.SelinuxModuleError(
            "this host has no SELinux configuration (no SELINUXTYPE in /etc/selinux/config): "
            "install a policy (Debian: selinux-basics selinux-policy-default; RHEL: "
            "selinux-policy-targeted) or run the kvmsec.hardening.selinux role")
    policy_dir = os.path.dirname(selinux.selinux_binary_policy_path())
    policy_file = core.find_policy_file(policy_dir)
    if policy_file is None:
        raise core.SelinuxModuleError(
            "SELinux policy %s is not installed on this host (no %s/policy.NN): install it "
            "(Debian: selinux-policy-default; RHEL: selinux-policy-targeted) or run the "
            "kvmsec.hardening.selinux role" % (policy_type, policy_dir))
    with open(policy_file, "rb") as handle:
        mls = core.policy_is_mls(handle.read(64))
    return core.Host(policy_type, mls)


def find_tools(module):
    semodule = module.get_bin_path("semodule")
    if semodule is None:
        raise core.SelinuxModuleError("semodule is not installed: install policycoreutils")
    converter = [p for p in core.PP_CONVERTERS if os.access(p, os.X_OK)]
    return core.Tools(semodule, checkmodule=module.get_bin_path("checkmodule"),
                      semodule_package=module.get_bin_path("semodule_package"),
                      pp_converter=converter[0] if converter else None)


def specs_of(params):
    if params["modules"] is not None:
        return [core.spec_from_params(entry) for entry in params["modules"]]
    return [core.spec_from_params(params)]


def decide(module):
    """decide plans the one transaction; applied, the plan commits it."""
    params = module.params
    # bad input is reported as such, before anything about the host, in check mode too: the
    # specs, their sources (readable, not empty, CIL syntax), state_dir and the numbers
    sources = core.prepare(specs_of(params))
    store = core.VersionStore(params["state_dir"], keep=params["keep_versions"])
    core.check_priority(params["priority"])
    manager = core.Manager(module_runner(module), find_tools(module), host_policy(), store, priority=params["priority"])
    warnings = []
    if not selinux.is_selinux_enabled():
        warnings.append("SELinux is disabled at runtime: the policy store was read and changed, and "
                        "the modules take effect when the host boots with SELinux enabled")
    return core.decide(sources, manager, warnings)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            MODULE_OPTIONS,
            name=dict(type="str"),
            modules=dict(type="list", elements="dict", options=ENTRY_SPEC),
            priority=dict(type="int", default=core.DEFAULT_PRIORITY),
            state_dir=dict(type="path", default=core.DEFAULT_STATE_DIR),
            keep_versions=dict(type="int", default=core.DEFAULT_KEEP_VERSIONS),
        ),
        mutually_exclusive=[("name", "modules")] + [("modules", key) for key in SINGLE_ONLY],
        required_one_of=[("name", "modules")],
        supports_check_mode=True,
    )
    if selinux is None:
        respawn_or_fail(module, "selinux", "the SELinux Python bindings (Debian: python3-selinux; "
                        "RHEL: python3-libselinux)", SELINUX_IMPORT_ERROR)
    run(module, lambda: decide(module), (core.SelinuxModuleError, CommandError, IOError, OSError), "selinux_module",
        always_diff=True)


if __name__ == "__main__":
    main()
