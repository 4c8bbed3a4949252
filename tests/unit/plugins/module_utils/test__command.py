import pytest

from ansible_collections.kvmsec.hardening.plugins.module_utils._command import (
    CommandError, checked)


def test_checked_returns_stdout(run):
    assert checked(run, ["printf", "hello"]) == "hello"


def test_checked_passes_data_on_stdin_not_argv(run):
    assert checked(run, ["cat"], data=b"s3cret") == "s3cret"


def test_checked_raises_with_program_and_stderr(run):
    with pytest.raises(CommandError) as err:
        checked(run, ["sh", "-c", "echo boom >&2; exit 3"], what="probe")
    assert str(err.value) == "probe failed (exit 3): boom"
    assert err.value.rc == 3
