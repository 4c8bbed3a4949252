# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Loads kvmsec.hardening.control_results next to the collection's playbooks.

Ansible loads callback plugins that sit beside a playbook without any configuration, so the
control report works from ansible-playbook, ansible-runner and AWX alike. The plugin itself,
with its documentation, is plugins/callback/control_results.py.
"""

from __future__ import annotations

from ansible_collections.kvmsec.hardening.plugins.callback.control_results import CallbackModule as _Enabled

DOCUMENTATION = r"""
name: kvmsec_control_results
type: aggregate
short_description: kvmsec.hardening.control_results, loaded beside the collection's playbooks
description:
  - See M(kvmsec.hardening.control_results) and the callback plugin of the same name.
author: kvmsec.hardening developers (@kvmsec)
"""


class CallbackModule(_Enabled):
    CALLBACK_NAME = "kvmsec_control_results"
    CALLBACK_NEEDS_ENABLED = False
