"""auditd.conf edits: what auditd would read, and refusals of what it would refuse.

The fixture is Debian 12's /etc/audit/auditd.conf (auditd 3.0.9), read from the lab host.
"""

from pathlib import Path

import pytest

from ansible_collections.kvmsec.hardening.plugins.module_utils import _auditd_conf as core

DEBIAN = (Path(__file__).resolve().parents[3] / "unit" / "data" / "auditd" / "debian12.conf").read_text()
BASELINE = {"space_left_action": "SYSLOG", "admin_space_left_action": "SYSLOG",
            "disk_full_action": "SYSLOG", "disk_error_action": "SYSLOG"}


def test_debian_file_gets_the_baseline_and_keeps_every_other_line():
    new_text, changes = core.plan(DEBIAN, BASELINE)
    assert changes == [
        {"key": "admin_space_left_action", "before": "SUSPEND", "after": "SYSLOG"},
        {"key": "disk_error_action", "before": "SUSPEND", "after": "SYSLOG"},
        {"key": "disk_full_action", "before": "SUSPEND", "after": "SYSLOG"},
    ]
    old_lines, new_lines = DEBIAN.splitlines(), new_text.splitlines()
    assert len(old_lines) == len(new_lines)
    differ = [(old, new) for old, new in zip(old_lines, new_lines) if old != new]
    assert differ == [("admin_space_left_action = SUSPEND", "admin_space_left_action = SYSLOG"),
                      ("disk_full_action = SUSPEND", "disk_full_action = SYSLOG"),
                      ("disk_error_action = SUSPEND", "disk_error_action = SYSLOG")]
    assert core.plan(new_text, BASELINE) == (new_text, [])


def test_actions_compare_without_case_as_auditd_reads_them():
    text = "disk_full_action = syslog\nspace_left_action = exec /usr/local/bin/page-oncall\n"
    assert core.plan(text, {"disk_full_action": "SYSLOG",
                            "space_left_action": "EXEC /usr/local/bin/page-oncall"}) == (text, [])
    # other values keep their case: a log group is a name
    assert core.plan("log_group = adm\n", {"log_group": "ADM"})[1] == [
        {"key": "log_group", "before": "adm", "after": "ADM"}]


def test_new_keywords_go_at_the_end_sorted_and_numbers_and_booleans_are_written():
    settings = {"num_logs": 10, "write_logs": True, "freq": 50}
    new_text, changes = core.plan("log_file = /var/log/audit/audit.log", settings)
    assert new_text == "log_file = /var/log/audit/audit.log\nfreq = 50\nnum_logs = 10\nwrite_logs = yes\n"
    assert [change["key"] for change in changes] == ["freq", "num_logs", "write_logs"]


def test_null_removes_every_line_of_the_keyword_and_a_repeat_collapses_where_it_first_stands():
    text = "disk_full_action = SUSPEND\nfreq = 20\ndisk_full_action = HALT\n"
    assert core.plan(text, {"disk_full_action": None}) == (
        "freq = 20\n", [{"key": "disk_full_action", "before": "HALT", "after": None}])
    # auditd reads the later line: HALT; written once, where the first stood
    new_text, changes = core.plan(text, {"disk_full_action": "HALT"})
    assert new_text == "disk_full_action = HALT\nfreq = 20\n"
    assert changes == [{"key": "disk_full_action", "before": "HALT", "after": "HALT"}]


@pytest.mark.parametrize("settings, message", [
    ({"disk_ful_action": "SYSLOG"}, "settings.disk_ful_action: auditd.conf(5) has no keyword disk_ful_action"),
    ({"disk_full_action": "EMAIL"}, "settings.disk_full_action: 'EMAIL' is not one of auditd's actions for it; "
                                    "valid: ignore, syslog, rotate, exec, suspend, single, halt"),
    ({"max_log_file_action": "keep logs"}, "settings.max_log_file_action: 'keep logs' is not one of"),
    ({"space_left_action": "exec"}, "settings.space_left_action: 'exec' is not one of"),
    ({"space_left_action": "exec page-oncall"}, "exec needs the absolute path of the program, not 'page-oncall'"),
    ({"action_mail_acct": "root\nspace_left_action = IGNORE"}, "settings.action_mail_acct: "),
    ({"action_mail_acct": ""}, "null removes the setting"),
    ({"num_logs": [5]}, "settings.num_logs: [5] is not a value auditd reads"),
])
def test_what_auditd_would_refuse_is_refused_naming_the_setting(settings, message):
    with pytest.raises(core.AuditdConfError) as caught:
        core.plan(DEBIAN, settings)
    assert message in str(caught.value)


def test_a_keyword_the_file_already_has_is_this_auditd_s_own():
    text = "future_keyword = 1\n"
    assert core.plan(text, {"future_keyword": 2}) == (
        "future_keyword = 2\n", [{"key": "future_keyword", "before": "1", "after": "2"}])
    with pytest.raises(core.AuditdConfError) as caught:
        core.plan(text, {"other_future_keyword": 2})
    assert "valid: action_mail_acct, " in str(caught.value) and "future_keyword, " in str(caught.value)


def test_a_line_auditd_cannot_read_is_reported_with_its_number():
    with pytest.raises(core.AuditdConfError) as caught:
        core.plan("# comment\nfreq = 20\nnonsense\n", {"freq": 20})
    assert str(caught.value) == "line 3: 'nonsense' is not keyword = value; auditd refuses the file"
