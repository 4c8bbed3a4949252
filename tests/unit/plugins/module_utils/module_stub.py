"""A stand-in for AnsibleModule with the few members _runner.run uses (check_mode, _diff, warn,
exit_json, fail_json), recording instead of exiting the process: unit tests run a core's plan
through the real runner, as its module does, without Ansible."""

import pytest

from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import run


class Exited(Exception):
    pass


class Module(object):
    def __init__(self, check_mode=False, diff=False):
        self.check_mode = check_mode
        self._diff = diff
        self.warnings = []
        self.outcome = None

    def warn(self, text):
        self.warnings.append(text)

    def exit_json(self, **result):
        self.outcome = ("exit", result)
        raise Exited()

    def fail_json(self, **result):
        self.outcome = ("fail", result)
        raise Exited()


def outcome(module, decide, errors, name="some_module", **kwargs):
    """(exit or fail, what the module returned) of run(module, decide, errors, name)."""
    with pytest.raises(Exited):
        run(module, decide, errors, name, **kwargs)
    return module.outcome


def returned(decide, check_mode=False):
    """(what the module returns, the warnings it gave) for decide() through the real runner, in
    check mode or applied, with --diff; the core's errors are raised, not turned into failures."""
    module = Module(check_mode=check_mode, diff=True)
    dummy, result = outcome(module, decide, ())
    return result, module.warnings
