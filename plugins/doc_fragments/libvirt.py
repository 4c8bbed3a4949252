# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """The connection option of every module that talks to libvirt."""

    DOCUMENTATION = r"""
requirements:
  - libvirt-python (Debian C(python3-libvirt)) on the target. When the module's interpreter
    lacks it, the module re-runs itself under the system Python that has it.
options:
  uri:
    description:
      - libvirt connection URI, the same for every module of the collection.
      - C(qemu:///system) reaches the host's system daemon (C(libvirtd), or C(virtqemud) with
        the modular daemons). Only a local URI lets the module compare what libvirt says with
        the host's files and processes.
    type: str
    default: qemu:///system
"""
