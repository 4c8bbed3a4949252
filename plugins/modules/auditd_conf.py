#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: auditd_conf
short_description: Set keywords of auditd's configuration (auditd.conf) and have the running auditd read them
version_added: 0.1.0
description:
  - Sets the given keywords in C(auditd.conf) and leaves every other line as it is; a keyword
    given as C(null) is removed, so auditd's built-in default applies.
  - auditd refuses a whole file for one line it cannot read - a reload then keeps the old
    settings and a boot starts no auditd - so a keyword must be one of auditd.conf(5) or already
    in the file, the C(*_action) keywords one of their actions, and every value what auditd.conf(5)
    says its keyword takes - numbers in their range (C(num_logs) up to 999, ports up to 65535),
    C(yes)/C(no), one of the listed words, absolute paths, one word on one line; anything else
    fails naming the setting and what is valid, and nothing is written.
  - Actions are compared without regard to case, as auditd reads them.
  - When the file changed and auditd runs, it is told to read it again (C(SIGHUP) through
    systemd, as C(service auditd reload) does where the unit has no reload command); if that
    fails the file is put back as it was.
author: kvmsec.hardening developers (@kvmsec)
options:
  settings:
    description:
      - Keywords and their values, for example C(disk_full_action=SYSLOG). Numbers are written as
        they are, booleans as C(yes)/C(no); C(null) removes the keyword.
    type: dict
    required: true
  path:
    description: auditd's configuration file.
    type: path
    default: /etc/audit/auditd.conf
  reload:
    description: Have a running auditd read the file again when it changed.
    type: bool
    default: true
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
  - Telling auditd to read its configuration needs systemd (C(systemctl kill --kill-whom=main
    --signal=SIGHUP auditd.service)); without it the file applies at auditd's next start.
seealso:
  - name: auditd.conf(5)
    description: The keywords and their values.
    link: https://man7.org/linux/man-pages/man5/auditd.conf.5.html
  - module: kvmsec.hardening.audit_rules
"""

EXAMPLES = r"""
- name: Warn in syslog as the audit log's disk fills, and keep recording once space is freed
  kvmsec.hardening.auditd_conf:
    settings:
      space_left_action: SYSLOG
      admin_space_left_action: SYSLOG
      disk_full_action: SYSLOG
      disk_error_action: SYSLOG
"""

RETURN = r"""
path:
  description: The configuration file.
  returned: always
  type: str
changes:
  description: The keywords auditd reads differently after the change (check mode - would), with both values.
  returned: always
  type: list
  elements: dict
  sample: [{"key": "disk_full_action", "before": "SUSPEND", "after": "SYSLOG"}]
reloaded:
  description: The units told to read the file again (check mode - none), C([auditd.service]) or C([]).
  returned: always
  type: list
  elements: str
  sample: [auditd.service]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kvmsec.hardening.plugins.module_utils import _auditd_conf as core
from ansible_collections.kvmsec.hardening.plugins.module_utils._command import module_runner
from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import run


def decide(module):
    params = module.params
    return core.decide(module_runner(module), params["path"], params["settings"], params["reload"],
                       module.get_bin_path("systemctl"))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            settings=dict(type="dict", required=True),
            path=dict(type="path", default="/etc/audit/auditd.conf"),
            reload=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    run(module, lambda: decide(module), (core.AuditdConfError,), "auditd_conf")


if __name__ == "__main__":
    main()
