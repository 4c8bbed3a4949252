"""Control results from task records: statuses, evidence, waivers, skips, the gate, report diffs."""

import datetime
import json

import pytest

from ansible_collections.kvmsec.hardening.plugins.plugin_utils import _controls as core

CATALOGUE = [
    {"id": "KVM-HOST-01", "title": "host", "severity": "high", "role": "kvm_host",
     "task_file": "roles/kvm_host/tasks/host.yml", "applies_to": "every host",
     "impact": {"reboot": False, "restarts_libvirtd": False, "restarts_guests": False}},
    {"id": "SVIRT-01", "title": "qemu.conf", "severity": "high", "role": "svirt",
     "task_file": "roles/svirt/tasks/qemu_conf.yml", "applies_to": "every host",
     "impact": {"reboot": False, "restarts_libvirtd": True, "restarts_guests": False}},
    {"id": "GUEST-RES-01", "title": "weights", "severity": "medium", "role": "guest_resources",
     "task_file": "roles/guest_resources/tasks/weights.yml",
     "applies_to": "hosts whose inventory lists guests in guest_resources_guests"},
]
TODAY = datetime.date(2026, 12, 1)


def record(control, status, task="a task", verdict=False, **result):
    tags = [control] + (["kvmsec_verdict"] if verdict else [])
    return core.observe(task, "ansible.builtin.copy", tags, status, result)


def context(**overrides):
    base = {"mode": "audit", "skip": [], "run_tags": ["all"], "skip_tags": [], "roles_enabled": {},
            "waivers": {}, "today": TODAY}
    base.update(overrides)
    return base


def statuses(records, **overrides):
    return dict((r["id"], (r["status"], r["reason"])) for r in core.evaluate(CATALOGUE, records, context(**overrides)))


QEMU_DIFF = {"before": "security_require_confined = 0\nuser = \"root\"\n",
             "after": "security_require_confined = 1\nuser = \"libvirt-qemu\"\n",
             "before_header": "/etc/libvirt/qemu.conf", "after_header": "/etc/libvirt/qemu.conf"}


@pytest.mark.parametrize("records, mode, expected", [
    # every task ran and none would change: pass
    ([record("SVIRT-01", "ok"), record("SVIRT-01", "ok")], "audit", "pass"),
    # a task that would change the host in check mode is what the host lacks
    ([record("SVIRT-01", "ok"), record("SVIRT-01", "changed")], "audit", "fail"),
    # the same change in a real run was a fix
    ([record("SVIRT-01", "changed")], "harden", "fixed"),
    # a verdict task that fails: the host does not meet the control
    ([record("SVIRT-01", "failed", verdict=True, msg="unconfined guest")], "audit", "fail"),
    # any other failure: the control could not be checked
    ([record("SVIRT-01", "changed"), record("SVIRT-01", "failed", msg="libvirt down")], "audit", "error"),
    ([record("SVIRT-01", "unreachable")], "audit", "error"),
    # no task ran at all (the host failed before): error, never silently absent
    ([], "audit", "error"),
    # every task skipped by its condition: not applicable
    ([record("SVIRT-01", "skipped", false_condition="svirt_guests | length > 0")], "audit", "not applicable"),
])
def test_status_from_the_tasks_records(records, mode, expected):
    assert statuses(records, mode=mode)["SVIRT-01"][0] == expected


def test_not_applicable_says_where_it_applies_and_which_condition_skipped_it():
    records = [record("GUEST-RES-01", "skipped", false_condition="guest_resources_guests | length > 0")]
    assert statuses(records)["GUEST-RES-01"] == (
        "not applicable", "applies to hosts whose inventory lists guests in guest_resources_guests;"
        " skipped because guest_resources_guests | length > 0 is false")


def test_evidence_of_a_failing_control_is_the_diff_it_would_apply():
    results = core.evaluate(CATALOGUE, [record("SVIRT-01", "changed", task="Set qemu.conf", diff=[QEMU_DIFF])],
                            context())
    evidence = results[1]["evidence"]
    assert [e["task"] for e in evidence] == ["Set qemu.conf"]
    assert evidence[0]["outcome"] == "would change"
    text = evidence[0]["text"]
    assert "-security_require_confined = 0" in text and "+security_require_confined = 1" in text
    assert "--- before: /etc/libvirt/qemu.conf" in text
    assert "user = \"libvirt-qemu\"" in text


def test_a_failed_verdict_comes_with_what_the_control_would_change():
    records = [record("SVIRT-01", "changed", task="Set qemu.conf", diff=[QEMU_DIFF]),
               record("SVIRT-01", "failed", task="Guests are confined", verdict=True, msg="guest web unconfined")]
    results = core.evaluate(CATALOGUE, records, context())
    assert results[1]["status"] == "fail"
    assert [(e["task"], e["outcome"]) for e in results[1]["evidence"]] == [
        ("Guests are confined", "failed"), ("Set qemu.conf", "would change")]
    assert "guest web unconfined" in results[1]["evidence"][0]["text"]
    assert "+security_require_confined = 1" in results[1]["evidence"][1]["text"]


def test_a_hardening_run_shows_what_changed():
    results = core.evaluate(CATALOGUE, [record("SVIRT-01", "changed", task="Set qemu.conf", diff=[QEMU_DIFF])],
                            context(mode="harden"))
    assert results[1]["status"] == "fixed" and results[1]["evidence"][0]["outcome"] == "changed"


def test_commands_in_check_mode_show_what_they_would_run():
    observed = core.observe("Set the booleans", "ansible.builtin.command", ["KVM-SELINUX-02"], "changed",
                            {"msg": "Command would have run if not in check mode"},
                            args={"argv": ["semanage", "import"], "stdin": "boolean --modify --off virt_use_nfs"})
    assert observed["text"].splitlines() == [
        "Command would have run if not in check mode", "runs: semanage import", "with input:",
        "boolean --modify --off virt_use_nfs"]


def test_no_log_results_stay_hidden():
    observed = core.observe("Encrypt", "kvmsec.hardening.qcow2_encrypt", ["IMAGE-ENC-01"], "changed",
                            {"censored": "the output has been hidden", "changed": True, "msg": "secret"},
                            args={"passphrase": "hunter2"})
    assert "text" not in observed and observed["censored"]
    evidence = core.evidence([observed], "harden")
    assert "hunter2" not in repr(evidence) and "secret" not in repr(evidence)


def test_long_evidence_is_cut():
    text = core.evidence_text({"msg": "x" * 10000})
    assert len(text) < core.TEXT_LIMIT + 100 and text.endswith("more characters]")


@pytest.mark.parametrize("overrides, reason", [
    ({"skip": ["SVIRT-01"]}, "listed in kvmsec_skip_controls"),
    ({"roles_enabled": {"svirt": False}}, "the svirt role is off (svirt_enabled: false)"),
    ({"run_tags": ["KVM-HOST-01"]}, "not selected by --tags KVM-HOST-01"),
    ({"skip_tags": ["SVIRT-01"]}, "--skip-tags SVIRT-01"),
])
def test_controls_the_operator_left_out_are_skipped(overrides, reason):
    assert statuses([record("SVIRT-01", "changed")], **overrides)["SVIRT-01"] == ("skipped", reason)


def test_tags_selecting_the_control_keep_it():
    assert statuses([record("SVIRT-01", "ok")], run_tags=["SVIRT-01", "KVM-HOST-01"])["SVIRT-01"][0] == "pass"


def waiver(expires):
    return core.check_inputs(CATALOGUE, [], [{"control": "SVIRT-01", "justification": "legacy guest",
                                              "owner": "virt-team", "expires": expires}], "low")


def test_a_waiver_turns_fail_into_waived_until_it_expires():
    failing = [record("SVIRT-01", "changed")]
    result = core.evaluate(CATALOGUE, failing, context(waivers=waiver("2026-12-31")))[1]
    assert result["status"] == "waived"
    assert result["reason"].startswith("waived until 2026-12-31 by virt-team: legacy guest")
    assert result["waiver"]["expired"] is False
    expired = core.evaluate(CATALOGUE, failing, context(waivers=waiver(datetime.date(2026, 11, 30))))[1]
    assert expired["status"] == "fail" and "its waiver expired on 2026-11-30" in expired["reason"]
    assert expired["waiver"]["expired"] is True


def test_a_waiver_never_hides_an_error_and_notes_a_pass():
    results = core.evaluate(CATALOGUE, [record("SVIRT-01", "failed", msg="libvirt down")],
                            context(waivers=waiver("2027-01-01")))
    assert results[1]["status"] == "error"
    passing = core.evaluate(CATALOGUE, [record("SVIRT-01", "ok")], context(waivers=waiver("2027-01-01")))[1]
    assert passing["status"] == "pass" and passing["reason"].endswith("the waiver is no longer needed")


@pytest.mark.parametrize("skip, waivers, severity, message", [
    (["SVIRT-9"], [], "low", "kvmsec_skip_controls: unknown control SVIRT-9; the catalogue has KVM-HOST-01"),
    ("SVIRT-01", [], "low", "kvmsec_skip_controls must be a list of control IDs"),
    ([], [], "severe", "kvmsec_fail_severity: 'severe' is not a severity; use one of critical, high"),
    ([], [{"control": "SVIRT-01", "owner": "me", "expires": "2027-01-01"}], "low",
     "kvmsec_waivers[0] lacks justification: every waiver needs control, justification, owner, expires"),
    ([], [{"control": "SVIRT-01", "owner": "me", "justification": "x", "expires": "next week"}], "low",
     "kvmsec_waivers[0].expires: 'next week' is not a date; write it as YYYY-MM-DD"),
    ([], [{"control": "NOPE-01", "owner": "me", "justification": "x", "expires": "2027-01-01"}], "low",
     "kvmsec_waivers[0]: unknown control NOPE-01"),
    ([], ["SVIRT-01"], "low", "kvmsec_waivers[0] must be a mapping"),
])
def test_bad_operator_input_is_refused_naming_the_variable(skip, waivers, severity, message):
    with pytest.raises(core.ControlInputError) as exc:
        core.check_inputs(CATALOGUE, skip, waivers, severity)
    assert message in str(exc.value)


@pytest.mark.parametrize("severity, expected", [
    ("low", ["SVIRT-01", "GUEST-RES-01"]),
    ("medium", ["SVIRT-01", "GUEST-RES-01"]),
    ("high", ["SVIRT-01"]),
    ("critical", []),
    ("none", []),
])
def test_the_gate_counts_failures_and_errors_at_or_above_its_severity(severity, expected):
    results = core.evaluate(CATALOGUE, [record("KVM-HOST-01", "ok"), record("SVIRT-01", "changed"),
                                        record("GUEST-RES-01", "failed", msg="boom")], context())
    assert core.gate_failing(results, severity) == expected


def test_fleet_report_totals_and_gate():
    hosts = [core.host_report(name, CATALOGUE, records, context(), {}, "high") for name, records in (
        ("b-host", [record("KVM-HOST-01", "ok"), record("SVIRT-01", "changed"), record("GUEST-RES-01", "ok")]),
        ("a-host", [record("KVM-HOST-01", "ok"), record("SVIRT-01", "ok"), record("GUEST-RES-01", "ok")]))]
    fleet = core.fleet_report(hosts, CATALOGUE, "audit", "high", "2026-12-01T00:00:00Z", "0.1.0")
    assert [h["host"] for h in fleet["hosts"]] == ["a-host", "b-host"]
    assert fleet["totals"]["pass"] == 5 and fleet["totals"]["fail"] == 1
    assert fleet["gate"] == {"severity": "high", "passed": False, "failing": [{"host": "b-host", "id": "SVIRT-01"}]}
    assert fleet["schema"] == core.SCHEMA


def test_job_artifacts_carry_the_gate_and_each_hosts_statuses_without_evidence():
    hosts = [core.host_report(name, CATALOGUE, records, context(), {"kernel": "6.1"}, "high") for name, records in (
        ("b-host", [record("KVM-HOST-01", "ok"), record("SVIRT-01", "failed", msg="boom")]),
        ("a-host", [record("KVM-HOST-01", "ok"), record("SVIRT-01", "changed")]))]
    fleet = core.fleet_report(hosts, CATALOGUE, "audit", "high", "2026-12-01T00:00:00Z", "0.1.0")
    artifacts = core.job_artifacts(fleet)
    assert artifacts["gate"] == fleet["gate"] and artifacts["gate"]["failing"] == [
        {"host": "b-host", "id": "SVIRT-01"}, {"host": "a-host", "id": "SVIRT-01"}]
    # an audit that would change something fails that control; a task that failed is an error
    assert artifacts["hosts"]["a-host"]["SVIRT-01"] == "fail" and artifacts["hosts"]["b-host"]["SVIRT-01"] == "error"
    assert set(artifacts["hosts"]["a-host"]) == set(c["id"] for c in CATALOGUE)
    assert artifacts["totals"] == fleet["totals"] and artifacts["mode"] == "audit"
    assert "boom" not in json.dumps(artifacts) and "kernel" not in json.dumps(artifacts)


def test_compare_lists_the_controls_that_moved_per_host():
    def fleet(status_by_host):
        return {"generated": "then", "hosts": [{"host": host, "controls": [{"id": cid, "status": status}
                                                                           for cid, status in controls.items()]}
                                               for host, controls in status_by_host.items()]}
    before = fleet({"h1": {"SVIRT-01": "fail", "KVM-HOST-01": "pass"}, "h2": {"SVIRT-01": "pass"}})
    after = fleet({"h1": {"SVIRT-01": "pass", "KVM-HOST-01": "pass"}, "h2": {"SVIRT-01": "fail"},
                   "h3": {"SVIRT-01": "pass"}})
    assert core.compare(before, after) == {"baseline_generated": "then", "hosts": [
        {"host": "h1", "changes": [{"id": "SVIRT-01", "before": "fail", "after": "pass"}]},
        {"host": "h2", "changes": [{"id": "SVIRT-01", "before": "pass", "after": "fail"}]},
        {"host": "h3", "changes": [{"id": "SVIRT-01", "before": "absent", "after": "pass"}]}]}


def test_remediation_names_the_tag_and_the_disruption():
    assert core.remediation(CATALOGUE[1]) == (
        "ansible-playbook harden-kvm.yml --tags SVIRT-01 (role svirt,"
        " roles/svirt/tasks/qemu_conf.yml); restarts libvirtd")


def test_structured_diffs_name_each_value_that_differs():
    diff = {"before": {"kvmsec-db": {"config io_weight": 500, "config cpu_weight": 1000}},
            "after": {"kvmsec-db": {"config io_weight": 1000, "config cpu_weight": 1000}}}
    assert core.render_diff(diff) == "kvmsec-db.config io_weight: 500 -> 1000"
