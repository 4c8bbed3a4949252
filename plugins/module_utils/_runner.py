# -*- coding: utf-8 -*-
# Copyright: kvmsec.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one contract between the collection's cores and their modules. Private to the collection.

A core reads the host and returns a ``Plan``: whether anything changes, the result to return,
the diff, the warnings, and how to carry it out. ``run`` is all a module does with it: in check
mode the plan is the answer; otherwise ``apply`` carries it out (and may return a result that
says what applying learned, such as a backup file, and set the plan's diff and warnings anew to
match). An error the core raises for the operator ends the module with its message, the host as
the core left it: unchanged, or rolled back.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class Plan(object):
    """What a core decided before anything is written."""

    def __init__(self, changed, result, diff=None, warnings=(), apply=None):
        self.changed = changed
        self.result = result
        self.diff = diff
        self.warnings = list(warnings)
        self.apply = apply


def run(module, decide, errors, name, always_diff=False):
    """Plan with ``decide()``, apply unless in check mode, and exit the module.

    errors: the exception types that are the operator's to act on, reported as ``NAME: message``
    with the exception's ``details`` (a dict) beside it; anything else is a bug and raises.
    The diff is returned when the run asks for one (``--diff``), or always with ``always_diff``
    for modules whose diff is part of their documented result.
    """
    try:
        plan = decide()
        result = plan.result
        if not module.check_mode and plan.apply is not None:
            result = plan.apply() or result
    except errors as exc:
        module.fail_json(msg="%s: %s" % (name, exc), **getattr(exc, "details", {}))
    for warning in plan.warnings:
        module.warn(warning)
    if plan.diff is not None and (always_diff or module._diff):
        result["diff"] = plan.diff
    module.exit_json(changed=plan.changed, **result)
