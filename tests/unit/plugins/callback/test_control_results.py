"""The callback's reading of loop items, as Ansible decides them."""

import pytest

from ansible_collections.kvmsec.hardening.plugins.callback.control_results import item_status


@pytest.mark.parametrize("item, status", [
    ({"changed": True}, "changed"),
    ({"changed": False}, "ok"),
    ({"skipped": True, "false_condition": "x"}, "skipped"),
    ({"failed": True}, "failed"),
    # an until loop that ran out of retries leaves failed behind; failed_when said it is fine
    ({"failed": True, "failed_when_result": False, "attempts": 6}, "ok"),
    ({"failed": False, "failed_when_result": True}, "failed"),
])
def test_item_status(item, status):
    assert item_status(item) == status
