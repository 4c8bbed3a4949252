"""The control report machinery through real ansible-playbook runs on this machine.

Two inventory hosts with a local connection run a play of tasks tagged with test control IDs
(a file to write, a read, a task skipped by its condition, a verdict, a command that fails),
followed by the collection's own report play (playbooks/report.yml) and its callback plugin,
exactly as harden-kvm.yml and audit-kvm.yml end. Only the catalogue is a test one.
"""

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

CATALOGUE = [
    {"id": "TEST-01", "title": "a file is in place", "severity": "high", "role": "files",
     "task_file": "roles/files/tasks/file.yml", "applies_to": "every host"},
    {"id": "TEST-02", "title": "a read", "severity": "low", "role": "files",
     "task_file": "roles/files/tasks/read.yml", "applies_to": "every host"},
    {"id": "TEST-03", "title": "only where wanted", "severity": "low", "role": "files",
     "task_file": "roles/files/tasks/wanted.yml", "applies_to": "hosts that want it"},
    {"id": "TEST-04", "title": "a verdict", "severity": "medium", "role": "verdicts",
     "task_file": "roles/verdicts/tasks/verdict.yml", "applies_to": "every host"},
]

TASKS = yaml.safe_load("""
- name: Put the file in place
  ansible.builtin.copy:
    content: "wanted\\n"
    dest: "{{ workdir }}/{{ inventory_hostname }}.conf"
    mode: "0644"
  when: "'TEST-01' not in kvmsec_skip_controls | default([])"
  tags: [TEST-01]
- name: Read something
  ansible.builtin.stat:
    path: "{{ workdir }}"
  tags: [TEST-02]
- name: Only where wanted
  ansible.builtin.debug:
    msg: wanted
  when: wants_it | default(false)
  tags: [TEST-03]
- name: The host is alpha
  ansible.builtin.assert:
    that: inventory_hostname == 'alpha'
    fail_msg: "{{ inventory_hostname }} is not alpha"
  when: "'TEST-04' not in kvmsec_skip_controls | default([])"
  tags: [TEST-04, kvmsec_verdict]
""")


@pytest.fixture()
def lab(tmp_path, hardening_playbook):
    (tmp_path / "catalogue.yml").write_text(yaml.safe_dump({"kvmsec_controls": CATALOGUE}))
    hardening_playbook(tmp_path / "play.yml", tasks=TASKS)
    return tmp_path


def inventory(lab, beta_vars=None):
    hosts = {"kvm_hosts": {"hosts": {"alpha": {}, "beta": beta_vars or {}},
                           "vars": {"ansible_connection": "local", "workdir": str(lab),
                                    "ansible_python_interpreter": "/usr/bin/python3"}}}
    path = lab / "inventory.yml"
    path.write_text(yaml.safe_dump(hosts))
    return path


def run(lab, *args, beta_vars=None, severity="none"):
    argv = ["ansible-playbook", "-i", str(inventory(lab, beta_vars)), str(lab / "play.yml"),
            "-e", "@%s" % (lab / "catalogue.yml"), "-e", "kvmsec_report_dir=%s" % (lab / "report"),
            "-e", "kvmsec_fail_severity=%s" % severity] + list(args)
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)


def results(lab, host):
    report = json.loads((lab / "report" / (host + ".json")).read_text())
    return report, dict((c["id"], c) for c in report["controls"])


def test_audit_in_check_mode_reports_every_control_and_changes_nothing(lab):
    proc = run(lab, "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not list(lab.glob("*.conf")), "the audit wrote on the host"
    report, alpha = results(lab, "alpha")
    dummy, beta = results(lab, "beta")
    assert report["mode"] == "audit"
    assert {cid: c["status"] for cid, c in alpha.items()} == {
        "TEST-01": "fail", "TEST-02": "pass", "TEST-03": "not applicable", "TEST-04": "pass"}
    assert alpha["TEST-01"]["evidence"][0]["outcome"] == "would change"
    assert "+wanted" in alpha["TEST-01"]["evidence"][0]["text"]
    assert alpha["TEST-03"]["reason"] == (
        "applies to hosts that want it; skipped because wants_it | default(false) is false")
    # a failed verdict is the control's failure, and the host's audit goes on after it
    assert beta["TEST-04"]["status"] == "fail"
    assert beta["TEST-04"]["evidence"][0]["text"] == "beta is not alpha"
    assert alpha["TEST-01"]["remediation"].startswith("ansible-playbook harden-kvm.yml --tags TEST-01")
    junit = ET.parse(lab / "report" / "junit.xml").getroot()
    cases = junit.findall(".//testcase")
    assert len(cases) == 8
    failures = [case.get("name") for case in cases if case.find("failure") is not None]
    assert sorted(failures) == ["TEST-01 a file is in place"] * 2 + ["TEST-04 a verdict"]
    html = (lab / "report" / "report.html").read_text()
    assert 'data-host="beta"' in html and 'data-id="TEST-04"' in html


def test_audit_without_check_flag_gives_the_results_of_check_mode(lab):
    def outcome():
        return [(report["host"], c["id"], c["status"], c["reason"], c["evidence"])
                for report in json.loads((lab / "report" / "report.json").read_text())["hosts"]
                for c in report["controls"]]
    assert run(lab, "--check").returncode == 0
    checked = outcome()
    proc = run(lab, "-e", "kvmsec_audit=true")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not list(lab.glob("*.conf"))
    assert outcome() == checked
    assert json.loads((lab / "report" / "report.json").read_text())["mode"] == "audit"


def test_the_gate_fails_the_run_at_or_above_its_severity(lab):
    failing = run(lab, "--check", severity="medium")
    assert failing.returncode == 2, failing.stdout
    assert "kvmsec baseline gate (medium and above) failed: alpha TEST-01, beta TEST-01, beta TEST-04" in failing.stdout
    assert (lab / "report" / "report.html").exists(), "the report is written before the gate"
    passing = run(lab, "--check", severity="critical")
    assert passing.returncode == 0, passing.stdout


def test_hardening_fixes_then_passes_with_nothing_changed(lab):
    first = run(lab, beta_vars={"kvmsec_skip_controls": ["TEST-04"]})
    assert first.returncode == 0, first.stdout + first.stderr
    report, alpha = results(lab, "alpha")
    assert report["mode"] == "harden" and alpha["TEST-01"]["status"] == "fixed"
    assert (lab / "alpha.conf").read_text() == "wanted\n"
    again = run(lab, beta_vars={"kvmsec_skip_controls": ["TEST-04"]})
    dummy, alpha = results(lab, "alpha")
    assert alpha["TEST-01"]["status"] == "pass"
    assert "changed=0" in again.stdout.split("PLAY RECAP")[1]


def test_tags_and_the_skip_list_leave_controls_out(lab):
    proc = run(lab, "--check", "--tags", "TEST-02", beta_vars={"kvmsec_skip_controls": ["TEST-01"]})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dummy, alpha = results(lab, "alpha")
    assert alpha["TEST-02"]["status"] == "pass"
    assert (alpha["TEST-01"]["status"], alpha["TEST-01"]["reason"]) == ("skipped", "not selected by --tags TEST-02")
    proc = run(lab, "--check", beta_vars={"kvmsec_skip_controls": ["TEST-01"]})
    dummy, beta = results(lab, "beta")
    assert (beta["TEST-01"]["status"], beta["TEST-01"]["reason"]) == ("skipped", "listed in kvmsec_skip_controls")


def test_waivers_until_they_expire(lab):
    def waiver(expires):
        return {"kvmsec_waivers": [{"control": "TEST-04", "justification": "beta is special", "owner": "ops",
                                    "expires": expires}]}
    run(lab, "--check", beta_vars=waiver("2999-01-01"))
    dummy, beta = results(lab, "beta")
    assert beta["TEST-04"]["status"] == "waived" and beta["TEST-04"]["waiver"]["owner"] == "ops"
    proc = run(lab, "--check", beta_vars=waiver("2020-01-01"), severity="medium")
    dummy, beta = results(lab, "beta")
    assert beta["TEST-04"]["status"] == "fail" and "expired on 2020-01-01" in beta["TEST-04"]["reason"]
    assert proc.returncode == 2


def test_a_bad_waiver_is_refused_naming_the_variable(lab):
    proc = run(lab, "--check", beta_vars={"kvmsec_waivers": [{"control": "TEST-04", "owner": "ops",
                                                              "expires": "2999-01-01"}]})
    assert proc.returncode == 2
    assert "beta: kvmsec_waivers[0] lacks justification" in proc.stdout


def test_comparison_with_an_earlier_report(lab):
    run(lab, "--check")
    baseline = lab / "before.json"
    (lab / "report" / "report.json").rename(baseline)
    run(lab)
    run(lab, "--check", "-e", "kvmsec_report_baseline=%s" % baseline)
    fleet = json.loads((lab / "report" / "report.json").read_text())
    moved = dict((h["host"], h["changes"]) for h in fleet["changes"]["hosts"])
    assert moved["alpha"] == [{"id": "TEST-01", "before": "fail", "after": "pass"}]


def test_an_importing_playbooks_vars_win_over_the_inventory_and_lose_to_extra_vars(lab):
    importer = lab / "importer.yml"
    importer.write_text(yaml.safe_dump([{"name": "Audit with settings of its own",
                                         "ansible.builtin.import_playbook": str(lab / "play.yml"),
                                         "vars": {"kvmsec_audit": True, "kvmsec_fail_severity": "none",
                                                  "kvmsec_skip_controls": ["TEST-02"]}}]))
    argv = ["ansible-playbook", "-i", str(inventory(lab, {"kvmsec_fail_severity": "low"})), str(importer),
            "-e", "@%s" % (lab / "catalogue.yml"), "-e", "kvmsec_report_dir=%s" % (lab / "report")]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report, beta = results(lab, "beta")
    assert report["gate_severity"] == "none" and beta["TEST-02"]["status"] == "skipped"
    proc = subprocess.run(argv + ["-e", "kvmsec_fail_severity=medium"], capture_output=True, text=True,
                          check=False, timeout=300)
    assert proc.returncode == 2 and results(lab, "beta")[0]["gate_severity"] == "medium"
