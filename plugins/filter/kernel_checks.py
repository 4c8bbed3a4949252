# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of the audit-only kernel controls (documented in the .yml files beside this one)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.kvmsec.hardening.plugins.plugin_utils import _kernel_checks


class FilterModule(object):
    def filters(self):
        return {
            "cpu_protection_problems": _kernel_checks.cpu_protection_problems,
            "vulnerability_problems": _kernel_checks.vulnerability_problems,
            "kernel_config_problems": _kernel_checks.kernel_config_problems,
            "secure_boot_problems": _kernel_checks.secure_boot_problems,
        }
