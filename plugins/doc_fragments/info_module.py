# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """Attributes of modules that only read the host."""

    DOCUMENTATION = r"""
attributes:
  check_mode:
    support: full
    description: The module never changes the host, so check mode runs it unchanged.
  diff_mode:
    support: N/A
    description: Nothing changes, so there is nothing to diff.
"""
