# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Running commands from the pure-Python cores. Private to the collection: not a public API.

Cores never call subprocess or Ansible directly. They receive a ``run`` callable with the
signature of ``AnsibleModule.run_command`` restricted to what they need::

    run(argv_list, data=None) -> (rc, stdout, stderr)
    run(argv_list, data=None, pass_fds=(fd, ...)) -> (rc, stdout, stderr)

``pass_fds`` is given only by cores that hand a program secrets through pipes it reads as
``/dev/fd/N``; runners for the other cores need not accept it. The module shell passes
``module_runner(module)``; unit tests pass a real subprocess runner or a table-driven fake.
Secrets travel through ``data`` (stdin) or such pipes, never argv.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class CommandError(Exception):
    """A command failed. The message names the program and quotes its error output."""

    def __init__(self, argv, rc, stdout, stderr, what=None):
        self.argv = list(argv)
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        detail = (stderr or stdout or "").strip()
        message = "%s failed (exit %s)" % (what or self.argv[0], rc)
        if detail:
            message += ": " + detail
        super(CommandError, self).__init__(message)


def checked(run, argv, data=None, what=None):
    """Run argv and return stdout; raise CommandError on a non-zero exit."""
    rc, stdout, stderr = run(argv, data=data)
    if rc != 0:
        raise CommandError(argv, rc, stdout, stderr, what=what)
    return stdout


def module_runner(module):
    """Adapt AnsibleModule.run_command to the cores' ``run`` signature (argv lists only)."""

    def run(argv, data=None, pass_fds=()):
        return module.run_command(list(argv), data=data, binary_data=data is not None,
                                  pass_fds=list(pass_fds) or None)

    return run
