"""Unit tests of the contract between cores and modules (_runner), without Ansible.

The module is module_stub's stand-in for AnsibleModule, recording instead of exiting the process.
"""

import pytest

from ansible_collections.kvmsec.hardening.plugins.module_utils._runner import Plan, run
from ansible_collections.kvmsec.hardening.tests.unit.plugins.module_utils import module_stub
from ansible_collections.kvmsec.hardening.tests.unit.plugins.module_utils.module_stub import Module


class CoreError(Exception):
    pass


def outcome(module, decide, errors=(CoreError,), **kwargs):
    return module_stub.outcome(module, decide, errors, **kwargs)


def planned(applied):
    def apply():
        applied.append(True)
        return {"written": "/etc/x", "backup_file": "/etc/x~"}
    return Plan(True, {"written": None}, {"before": "a", "after": "b"}, ["look"], apply)


def test_check_mode_returns_the_plan_and_applies_nothing():
    applied = []
    module = Module(check_mode=True, diff=True)
    assert outcome(module, lambda: planned(applied)) == (
        "exit", {"changed": True, "written": None, "diff": {"before": "a", "after": "b"}})
    assert applied == [] and module.warnings == ["look"]


def test_a_real_run_applies_and_returns_what_applying_learned():
    applied = []
    kind, result = outcome(Module(), lambda: planned(applied))
    assert applied == [True] and kind == "exit"
    assert result == {"changed": True, "written": "/etc/x", "backup_file": "/etc/x~"}


def test_the_diff_comes_with_diff_mode_or_always_where_documented():
    plan = Plan(False, {}, {"before": "", "after": ""})
    assert "diff" not in outcome(Module(), lambda: plan)[1]
    assert "diff" in outcome(Module(), lambda: plan, always_diff=True)[1]


def test_an_operator_error_fails_with_the_name_and_its_details_and_a_bug_raises():
    error = CoreError("path /x is not absolute")
    error.details = {"in_use_by": ["web01"]}

    def refuse():
        raise error
    assert outcome(Module(), refuse) == ("fail", {"msg": "some_module: path /x is not absolute",
                                                  "in_use_by": ["web01"]})

    def broken():
        raise KeyError("bug")
    with pytest.raises(KeyError):
        run(Module(), broken, (CoreError,), "some_module")


def test_an_error_while_applying_fails_the_run_too():
    def apply():
        raise CoreError("libvirt refused the definition")
    kind, result = outcome(Module(), lambda: Plan(True, {}, apply=apply))
    assert (kind, result["msg"]) == ("fail", "some_module: libvirt refused the definition")
