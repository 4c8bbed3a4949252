"""auditd.conf edits: what auditd would read, and refusals of what it would refuse.

The fixture is Debian 12's /etc/audit/auditd.conf (auditd 3.0.9), read from the lab host.
"""

from pathlib import Path

import pytest

from ansible_collections.kvmsec.hardening.plugins.module_utils import _auditd_conf as core
from ansible_collections.kvmsec.hardening.tests.unit.plugins.module_utils.module_stub import Module, outcome

DEBIAN = (Path(__file__).resolve().parents[2] / "data" / "auditd" / "debian12.conf").read_text()
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


@pytest.mark.parametrize("settings, message", [
    ({"num_logs": -1}, "settings.num_logs: '-1' is not a number from 0 to 999"),
    ({"num_logs": 10 ** 30}, "settings.num_logs: '1000000000000000000000000000000' is not a number from 0 to 999"),
    ({"num_logs": "5 x"}, "settings.num_logs: '5 x' is two words"),
    ({"freq": True}, "settings.freq: 'yes' is not a number"),
    ({"space_left": "120%"}, "settings.space_left: '120%' is not a number from 0 to 2147483647 (or a percentage"),
    ({"tcp_listen_port": 70000}, "settings.tcp_listen_port: '70000' is not a number from 1 to 65535"),
    ({"write_logs": "maybe"}, "settings.write_logs: 'maybe'; valid: yes, no"),
    ({"log_format": "json"}, "settings.log_format: 'json'; valid: raw, enriched, nolog"),
    ({"log_file": "audit.log"}, "settings.log_file: 'audit.log' is not an absolute path"),
    ({"action_mail_acct": "root admin"}, "settings.action_mail_acct: 'root admin' is two words"),
    ({"tcp_client_ports": "2000-1024"}, "settings.tcp_client_ports: '2000-1024' is not a port"),
])
def test_a_value_auditd_would_refuse_for_its_keyword_is_refused_naming_it(settings, message):
    with pytest.raises(core.AuditdConfError) as caught:
        core.plan(DEBIAN, settings)
    assert message in str(caught.value)


@pytest.mark.parametrize("settings", [
    {"num_logs": 0}, {"num_logs": "999"}, {"space_left": "25%"}, {"admin_space_left": 50}, {"write_logs": False},
    {"flush": "INCREMENTAL_ASYNC"}, {"log_file": "/var/log/audit/audit.log"}, {"tcp_client_ports": "1024-65535"},
])
def test_values_auditd_reads_are_taken(settings):
    core.plan(DEBIAN, settings)


class Auditd(object):
    """systemd and auditd cannot be driven from a unit test: systemctl answers as told and the
    signals it would send are recorded; the file is real."""

    def __init__(self, active=True, failing=False):
        self.active, self.failing, self.calls = active, failing, []

    def run(self, argv, data=None):
        self.calls.append(argv[1])
        if argv[1] == "is-active":
            return (0 if self.active else 3), "", ""
        return (1, "", "Failed to kill unit auditd.service: Access denied") if self.failing else (0, "", "")


def test_decide_predicts_and_apply_writes_and_tells_auditd(tmp_path):
    conf = tmp_path / "auditd.conf"
    conf.write_text(DEBIAN)
    auditd = Auditd()
    plan = core.decide(auditd.run, str(conf), {"disk_full_action": "SYSLOG"}, True, "systemctl")
    assert plan.changed and plan.result["changes"][0]["after"] == "SYSLOG"
    assert conf.read_text() == DEBIAN and auditd.calls == []
    assert plan.apply()["reloaded"] == ["auditd.service"]
    assert "disk_full_action = SYSLOG\n" in conf.read_text()
    assert auditd.calls == ["is-active", "kill"]
    again = core.decide(auditd.run, str(conf), {"disk_full_action": "syslog"}, True, "systemctl")
    assert not again.changed and again.apply is None


def test_auditd_not_running_is_not_told_and_a_failed_signal_puts_the_file_back(tmp_path):
    conf = tmp_path / "auditd.conf"
    conf.write_text(DEBIAN)
    assert core.decide(Auditd(active=False).run, str(conf), {"freq": 20}, True, "systemctl").apply()["reloaded"] == []
    written = conf.read_text()
    plan = core.decide(Auditd(failing=True).run, str(conf), {"freq": 30}, True, "systemctl")
    with pytest.raises(core.AuditdConfError, match="Access denied; %s is back as it was" % conf):
        plan.apply()
    assert conf.read_text() == written


def test_a_file_that_cannot_be_written_fails_cleanly_through_the_module_runner(tmp_path, monkeypatch):
    conf = tmp_path / "auditd.conf"
    conf.write_text(DEBIAN)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(core._files, "atomic_write", full)
    module = Module()
    kind, result = outcome(module, lambda: core.decide(Auditd().run, str(conf), {"freq": 20}, True, "systemctl"),
                           (core.AuditdConfError,), "auditd_conf")
    assert (kind, result["msg"]) == ("fail", "auditd_conf: cannot write %s: No space left on device; it is as it was"
                                     % conf)
    assert conf.read_text() == DEBIAN


@pytest.mark.parametrize("path, settings, message", [
    ("audit/auditd.conf", {"freq": 1}, "path: 'audit/auditd.conf' is not an absolute path"),
    ("/etc/audit/auditd.conf", ["freq"], "settings: ['freq'] is not a dictionary"),
])
def test_a_bad_path_or_settings_shape_is_refused(path, settings, message):
    with pytest.raises(core.AuditdConfError) as caught:
        core.decide(Auditd().run, path, settings, True, "systemctl")
    assert message in str(caught.value)
