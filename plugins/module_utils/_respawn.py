# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Finding the system bindings (libvirt, SELinux). Private to the collection: not a public API.

The libvirt and SELinux Python bindings come from the distribution (python3-libvirt,
python3-selinux) and live only in the system Python. A module run by another interpreter (a
virtualenv, an execution environment) re-runs itself under the system Python that has them.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import traceback

from ansible.module_utils.basic import missing_required_lib
from ansible.module_utils.common.respawn import (
    has_respawned,
    probe_interpreters_for_module,
    respawn_module,
)

from ansible_collections.kvmsec.hardening.plugins.module_utils._libvirt import Connection, LibvirtError

SYSTEM_PYTHONS = ("/usr/bin/python3", "/usr/libexec/platform-python", "/usr/bin/python")
LIBVIRT_PACKAGE = "libvirt-python (Debian: python3-libvirt)"


def respawn_or_fail(module, binding, package, import_error, reason=None):
    """Re-run the module under a system Python that can import ``binding``, or fail naming
    the ``package`` that provides it. Does not return."""
    if not has_respawned():
        interpreter = probe_interpreters_for_module(list(SYSTEM_PYTHONS), binding)
        if interpreter:
            respawn_module(interpreter)
    module.fail_json(msg=missing_required_lib(package, reason=reason), exception=import_error)


def libvirt_connection(module, uri, reason=None, hint=""):
    """A ``_libvirt.Connection`` to uri, with libvirt-python from the module's Python or, by
    re-running the module, from the system's. A connection that fails ends the module with the
    message (and ``hint``): nothing has been changed yet."""
    try:
        import libvirt
    except ImportError:
        respawn_or_fail(module, "libvirt", LIBVIRT_PACKAGE, traceback.format_exc(), reason)
    try:
        return Connection(libvirt, uri)
    except LibvirtError as exc:
        module.fail_json(msg="%s%s" % (exc, hint))


def libvirt_errors():
    """What a call through the libvirt layer can raise: its LibvirtError and libvirt-python's own
    error, when this Python has libvirt-python (or will, once libvirt_connection re-ran the
    module under the system Python)."""
    try:
        import libvirt
    except ImportError:
        return (LibvirtError,)
    return (LibvirtError, libvirt.libvirtError)
