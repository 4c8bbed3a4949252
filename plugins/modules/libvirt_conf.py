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
      - Settings by name. Values are integers, booleans (written as C(1)/C(0)), strings or lists
        of those; C(null) removes the setting so that libvirt's default applies.
      - Give numeric settings as YAML numbers or booleans; a quoted C("1") is written as a
        string, which libvirt refuses for a numeric setting.
      - Settings that hold secrets (C(vnc_password), C(spice_password), ...) are refused here;
        give them in O(secret_settings).
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

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kvmsec.hardening.plugins.module_utils import _files
from ansible_collections.kvmsec.hardening.plugins.module_utils import _libvirt_conf as core


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            settings=dict(type="dict", required=True),
            secret_settings=dict(type="dict", default={}, no_log=True),
            backup=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    path = module.params["path"]
    try:
        settings, secret_names = core.split_secrets(module.params["settings"],
                                                    module.params["secret_settings"])
        text = _files.read_text(path)
        new_text, changes = core.plan(text, settings, secret_names)
    except core.ConfError as exc:
        module.fail_json(msg="libvirt_conf: %s: %s" % (path, exc))
    except (IOError, OSError) as exc:
        module.fail_json(msg="libvirt_conf: cannot read %s (is libvirt installed?): %s" % (path, exc))
    result = dict(changed=new_text != text, path=path, changes=changes)
    if module._diff:
        result["diff"] = dict(before=core.masked(text, secret_names),
                              after=core.masked(new_text, secret_names),
                              before_header=path, after_header=path)
    if result["changed"] and not module.check_mode:
        if module.params["backup"]:
            result["backup_file"] = module.backup_local(path)
        try:
            _files.atomic_write(path, new_text)
        except (IOError, OSError) as exc:
            module.fail_json(msg="libvirt_conf: cannot write %s: %s" % (path, exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
