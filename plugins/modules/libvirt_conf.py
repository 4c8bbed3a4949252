#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: libvirt_conf
short_description: Set values in libvirt's configuration files (qemu.conf, libvirtd.conf)
version_added: 0.1.0
description:
  - Sets, replaces or removes C(name = value) settings in a libvirt configuration file such as
    C(/etc/libvirt/qemu.conf), with libvirt's own syntax - integers, quoted strings and lists
    that may span several lines.
  - The file is parsed first; a file with a syntax error is left alone and the error names the
    line. The edited text is parsed again and every setting must read back as requested before
    the file is replaced, atomically and keeping its owner, mode and SELinux label.
  - A new setting is placed after libvirt's commented-out example of it when the file has one.
    Comments, blank lines and the other settings are kept as they are. Duplicate statements of a
    managed setting are removed, so the value libvirt uses is the one requested.
  - Restarting the daemon is left to the caller (a handler), so it happens only on change.
author: kvmsec.hardening developers (@kvmsec)
options:
  path:
    description:
      - The configuration file, for example C(/etc/libvirt/qemu.conf).
    type: path
    required: true
  settings:
    description:
      - Settings by name. Values are what libvirt's parser reads and its daemons use - integers
        from -9223372036854775808 to 9223372036854775807 (libvirt silently wraps bigger ones),
        booleans (written as C(1)/C(0)), strings on one line, or flat lists of strings; C(null)
        removes the setting so that libvirt's default applies. Anything else (a nested list, a
        number in a list, a decimal number, a dictionary) is refused naming the setting, and the
        file is left as it is.
      - Names are a letter followed by letters, digits and C(_), as libvirt reads them.
      - Give numeric settings as YAML numbers or booleans; a quoted C("1") is written as a
        string, which libvirt refuses for a numeric setting.
      - Settings that hold secrets (names containing C(passw) or C(secret), such as
        C(vnc_password) and C(spice_password)) are refused here; give them in
        O(secret_settings). Their values are kept out of every log even then - the module logs
        its invocation with O(settings) hidden and masks the values in its result.
    type: dict
    required: true
  secret_settings:
    description:
      - Settings whose values are secrets. Same rules as O(settings); their values never appear
        in results, diffs or logs.
    type: dict
    default: {}
  backup:
    description:
      - Keep a timestamped copy of the file before changing it.
    type: bool
    default: false
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
  - Values of O(secret_settings), and of any setting in the file whose name contains C(passw)
    or C(secret), are masked in RV(changes) and in the diff.
seealso:
  - module: kvmsec.hardening.svirt_label
"""

EXAMPLES = r"""
- name: Confine every guest with SELinux and refuse unconfined guests
  kvmsec.hardening.libvirt_conf:
    path: /etc/libvirt/qemu.conf
    settings:
      security_driver: selinux
      security_default_confined: 1
      security_require_confined: 1
      user: libvirt-qemu
      group: libvirt-qemu
  notify: Restart libvirtd

- name: A VNC password, kept out of logs
  kvmsec.hardening.libvirt_conf:
    path: /etc/libvirt/qemu.conf
    settings:
      vnc_tls: 1
    secret_settings:
      vnc_password: "{{ vault_vnc_password }}"

- name: A minimal device ACL, and libvirt's default back for namespaces
  kvmsec.hardening.libvirt_conf:
    path: /etc/libvirt/qemu.conf
    settings:
      cgroup_device_acl: [/dev/null, /dev/full, /dev/zero, /dev/random, /dev/urandom, /dev/ptmx]
      namespaces: null
"""

RETURN = r"""
path:
  description: The file.
  returned: always
  type: str
changes:
  description: The settings that differed, with the value before (null when unset) and after.
  returned: always
  type: list
  elements: dict
  sample:
    - key: security_require_confined
      before: null
      after: 1
backup_file:
  description: The copy made before the change.
  returned: when O(backup=true) and the file changed
  type: str
"""

from ansible.module_utils import basic
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.validation import check_type_dict
from ansible_collections.kvmsec.hardening.plugins.module_utils import _libvirt_conf as core
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import run


def leaked_secrets():
    """Values of secret settings given in settings, read before AnsibleModule starts.

    AnsibleModule logs its arguments (syslog, journal) while it starts, before main() can refuse
    a secret in the wrong option, and no_log cannot mark keys of a free-form dict. ansible-test's
    argument-spec probe stands in for _load_params and returns None.
    """
    settings = (basic._load_params() or {}).get("settings")
    if isinstance(settings, str):
        try:
            settings = check_type_dict(settings)
        except TypeError:
            # Ansible refuses it, but its invocation in the result shows it: hide all of it
            return {settings} if core.SECRET_RE.search(settings) else set()
    return core.leaked_secret_values(settings) if isinstance(settings, dict) else set()


def decide(module):
    params = module.params
    return core.decide(params["path"], params["settings"], params["secret_settings"],
                       module.backup_local if params["backup"] else None)


def main():
    leaked = leaked_secrets()
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            # no_log only for a call that carries a secret among the plain settings: no_log on the
            # whole option is the one mark AnsibleModule honours when it logs the invocation
            settings=dict(type="dict", required=True, no_log=bool(leaked)),
            secret_settings=dict(type="dict", default={}, no_log=True),
            backup=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    if leaked:
        # in the result (-vvv, ANSIBLE_LOG_PATH) only the secrets need masking, not every value;
        # settings given as "k=v" text were hidden as a whole, not by value
        module.no_log_values.difference_update(core.leaves(module.params["settings"]) - leaked
                                               - core.leaves(module.params["secret_settings"]))
        module.no_log_values.update(leaked)
    run(module, lambda: decide(module), (core.ConfError,), "libvirt_conf")


if __name__ == "__main__":
    main()
