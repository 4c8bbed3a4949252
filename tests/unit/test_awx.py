"""AWX as code: playbooks/awx-configure.yml, its job templates and surveys (playbooks/vars/awx.yml),
and the execution environment's requirements, checked without an AWX server or a registry.

The job templates run playbooks that exist; every survey question would pass AWX's own survey
validation; every variable a job receives is a documented role variable or a kvmsec_* variable
documented in docs/; the controls offered are the catalogue's; each disruptive impact of the
catalogue has a question, and its answer reaches the roles as the boolean ansible-core 2.19
requires, through a real ansible-playbook run fed the extra vars the way AWX writes them. The
playbook itself runs too, each awx.awx task printing the arguments it would send.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from awx_job_templates import CATALOGUE, awx_extravars, job_templates

from ansible_collections.kvmsec.hardening.plugins.action.control_results import HOST_SETTINGS
from ansible_collections.kvmsec.hardening.plugins.plugin_utils._controls import GATE_SEVERITIES

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = ROOT / "playbooks" / "awx-configure.yml"
DOCS = "\n".join(path.read_text() for path in sorted((ROOT / "docs").glob("*.md")))
AWX_DOC = (ROOT / "docs" / "awx.md").read_text()
# the question types AWX accepts, and the Python type of a default for each
QUESTION_TYPES = {"text": str, "textarea": str, "password": str, "integer": int, "float": (int, float),
                  "multiplechoice": str, "multiselect": str}
SWITCH = re.compile(r"^\{\{ (kvmsec_allow_[a-z_]+) \| bool \}\}$")


TEMPLATES = job_templates()
NAMES = [template["name"] for template in TEMPLATES]
HARDEN = next(template for template in TEMPLATES if template["playbook"] == "playbooks/harden-kvm.yml")


def role_options():
    options = {}
    for spec in sorted((ROOT / "roles").glob("*/meta/argument_specs.yml")):
        role = spec.parent.parent.name
        for name, option in yaml.safe_load(spec.read_text())["argument_specs"]["main"]["options"].items():
            options[name] = dict(option, role=role)
    return options


ROLE_OPTIONS = role_options()


def questions(template):
    return {question["variable"]: question for question in template["survey"]}


def switches(template):
    """Role variable -> the survey variable whose answer the job template turns into it."""
    found = {}
    for name, value in template["extra_vars"].items():
        match = SWITCH.match(str(value))
        if match:
            found[name] = match.group(1)
    return found


def test_job_templates_run_playbooks_of_the_project():
    assert len(NAMES) == len(set(NAMES))
    assert {"Harden KVM hosts", "Audit KVM hosts"} <= set(NAMES)
    for template in TEMPLATES:
        assert (ROOT / template["playbook"]).is_file(), template["playbook"]
        assert template["job_type"] in ("run", "check"), template["name"]
        assert template["description"].strip(), template["name"]


@pytest.mark.parametrize("template", TEMPLATES, ids=NAMES)
def test_survey_passes_awx_validation(template):
    # what AWX's API refuses in a survey spec, so a mistake shows here and not at the controller
    variables = [question["variable"] for question in template["survey"]]
    assert len(variables) == len(set(variables)), variables
    for question in template["survey"]:
        where = "%s: %s" % (template["name"], question.get("variable"))
        for key in ("question_name", "variable", "type"):
            assert isinstance(question.get(key), str) and question[key], where
        assert isinstance(question.get("required"), bool), where
        assert question["type"] in QUESTION_TYPES, where
        default = question.get("default", "")
        if default != "":
            assert isinstance(default, QUESTION_TYPES[question["type"]]), where
        if question["type"] in ("multiplechoice", "multiselect"):
            choices = question["choices"]
            assert isinstance(choices, list) and choices and all(isinstance(c, str) for c in choices), where
            defaults = default.splitlines()
            assert all(value in choices for value in defaults), where
            if question["type"] == "multiplechoice":
                assert len(defaults) == 1, where
        if question["type"] in ("text", "textarea") and default != "":
            assert question.get("min", 0) <= len(default) <= question.get("max", len(default)), where


@pytest.mark.parametrize("template", TEMPLATES, ids=NAMES)
def test_every_job_variable_is_documented(template):
    for name in list(questions(template)) + list(template["extra_vars"]):
        if name in ROLE_OPTIONS:
            continue
        assert name.startswith("kvmsec_"), "%s: %s is neither a role variable nor kvmsec_*" % (template["name"], name)
        assert "`%s`" % name in DOCS, "%s is not documented in docs/" % name


@pytest.mark.parametrize("template", TEMPLATES, ids=NAMES)
def test_role_variables_come_only_through_switches(template):
    # a role variable set any other way would reach the roles as whatever AWX wrote
    unconverted = [name for name in template["extra_vars"] if name in ROLE_OPTIONS and name not in switches(template)]
    assert not unconverted, unconverted
    assert not [name for name in questions(template) if name in ROLE_OPTIONS]


def test_skip_controls_offers_the_catalogue():
    for template in TEMPLATES:
        question = questions(template)["kvmsec_skip_controls"]
        assert question["type"] == "multiselect" and not question["required"]
        assert question["choices"] == [control["id"] for control in CATALOGUE]


def test_severity_gate_offers_what_the_report_accepts():
    for template in TEMPLATES:
        question = questions(template)["kvmsec_fail_severity"]
        assert question["choices"] == list(GATE_SEVERITIES)
        assert question["default"] == dict(HOST_SETTINGS)["kvmsec_fail_severity"]


def test_serial_is_asked_for_both_runs():
    for template in TEMPLATES:
        assert questions(template)["kvmsec_serial"]["default"] == "100%"


def test_switches_default_to_the_roles_defaults():
    found = switches(HARDEN)
    assert found
    asked = questions(HARDEN)
    for role_variable, survey_variable in found.items():
        option = ROLE_OPTIONS[role_variable]
        assert option["type"] == "bool", role_variable
        question = asked[survey_variable]
        assert question["type"] == "multiplechoice" and question["choices"] == ["no", "yes"], survey_variable
        assert question["default"] == ("yes" if option["default"] else "no"), (survey_variable, role_variable)
    # one answer may decide several roles' switches, but never two answers one switch
    for survey_variable in set(found.values()):
        defaults = {ROLE_OPTIONS[name]["default"] for name, answer in found.items() if answer == survey_variable}
        assert len(defaults) == 1, survey_variable


def test_every_disruptive_control_can_be_allowed():
    found = switches(HARDEN)
    for control in CATALOGUE:
        for impact, disruptive in control["impact"].items():
            if not disruptive:
                continue
            answer = "kvmsec_allow_" + impact
            assert answer in questions(HARDEN), "%s: no question allows %s" % (control["id"], impact)
            assert any(variable.startswith(control["role"] + "_") for variable, by in found.items() if by == answer), \
                "%s: %s sets no variable of the role %s" % (control["id"], answer, control["role"])


def test_the_audit_asks_nothing_it_cannot_do():
    for template in TEMPLATES:
        if template["playbook"] == "playbooks/audit-kvm.yml":
            assert not switches(template)
            assert not [name for name in questions(template) if name.startswith("kvmsec_allow_")]


@pytest.mark.parametrize("answer", ["yes", "no"])
def test_answers_reach_the_roles_as_booleans(tmp_path, answer):
    found = switches(HARDEN)
    answers = {question: answer for question in set(found.values())}
    (tmp_path / "extravars").write_text(awx_extravars(HARDEN, answers, 42))
    # the roles write `when: svirt_restart_libvirtd`; `is true` fails on anything but a boolean
    expected = "true" if answer == "yes" else "false"
    playbook = [{
        "name": "A job of the harden template",
        "hosts": "localhost",
        "gather_facts": False,
        "tasks": [
            {"name": "The roles get booleans",
             "ansible.builtin.assert": {"that": ["%s is %s" % (name, expected) for name in sorted(found)]}},
            {"name": "The conditions the roles write accept them",
             "ansible.builtin.assert": {"that": ["%s%s" % ("" if answer == "yes" else "not ", name)
                                                 for name in sorted(found)]}},
            {"name": "The reports go to the job's directory",
             "ansible.builtin.assert": {"that": ["kvmsec_report_dir == '/srv/kvmsec-reports/42'"]}},
        ],
    }]
    (tmp_path / "job.yml").write_text(json.dumps(playbook))
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                           str(tmp_path / "job.yml"), "-e", "@%s" % (tmp_path / "extravars")],
                          capture_output=True, text=True, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


SITE = {
    "kvmsec_awx_scm_url": "https://git.example.org/virt/kvm-fleet.git",
    "kvmsec_awx_inventory_file": "inventory/production.yml",
    "kvmsec_awx_ee_image": "registry.example.org/kvmsec/hardening-ee:0.1.0",
    "kvmsec_awx_machine_username": "ansible",
    "kvmsec_awx_machine_ssh_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nkey\n-----END OPENSSH PRIVATE KEY-----\n",
    "kvmsec_awx_machine_become_password": "sudo-secret",
    "kvmsec_awx_vault_password": "vault-secret",
    "kvmsec_awx_report_dir": "/srv/kvmsec-reports",
}


@pytest.fixture(scope="module")
def module_calls(tmp_path_factory):
    """What awx-configure.yml hands each awx.awx module, from a real run of the playbook in which
    every awx.awx task prints its arguments instead of calling a controller (none is here)."""
    tmp = tmp_path_factory.mktemp("awx-configure")
    play = yaml.safe_load(PLAYBOOK.read_text())[0]
    play["vars_files"] = [str(PLAYBOOK.parent / path) for path in play["vars_files"]]
    del play["module_defaults"]
    for task in play["tasks"]:
        module = next((key for key in task if key.startswith("awx.awx.")), None)
        if module:
            task.pop("no_log", None)
            task["ansible.builtin.debug"] = {"msg": {"module": module, "args": task.pop(module)}}
    (tmp / "play.yml").write_text(json.dumps([play]))
    (tmp / "site.yml").write_text(json.dumps(SITE))
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), str(tmp / "play.yml"),
                           "-e", "@%s" % (tmp / "site.yml")], capture_output=True, text=True, check=False, cwd=tmp,
                          env=dict(os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = {}
    for task in json.loads(proc.stdout)["plays"][0]["tasks"]:
        result = task["hosts"]["localhost"]
        for item in result.get("results", [result]):
            if isinstance(item.get("msg"), dict):
                calls.setdefault(item["msg"]["module"], []).append(
                    {key: value for key, value in item["msg"]["args"].items()
                     if not str(value).startswith("__omit_place_holder__")})
    return calls


def test_the_playbook_configures_every_object(module_calls):
    assert sorted(module_calls) == ["awx.awx.credential", "awx.awx.execution_environment", "awx.awx.inventory",
                                    "awx.awx.inventory_source", "awx.awx.job_template", "awx.awx.project",
                                    "awx.awx.schedule"]
    project = module_calls["awx.awx.project"][0]
    assert project["scm_url"] == SITE["kvmsec_awx_scm_url"] and "scm_branch" not in project
    source = module_calls["awx.awx.inventory_source"][0]
    assert (source["source"], source["source_project"], source["source_path"]) == \
        ("scm", project["name"], SITE["kvmsec_awx_inventory_file"])
    assert module_calls["awx.awx.execution_environment"][0]["image"] == SITE["kvmsec_awx_ee_image"]


def test_credentials_carry_only_the_secrets_given(module_calls):
    machine, vault = module_calls["awx.awx.credential"]
    assert machine["credential_type"] == "Machine" and vault["credential_type"] == "Vault"
    assert machine["inputs"] == {"username": "ansible", "ssh_key_data": SITE["kvmsec_awx_machine_ssh_key"],
                                 "become_method": "sudo", "become_password": "sudo-secret"}
    assert vault["inputs"] == {"vault_password": "vault-secret"}


def test_job_templates_get_the_vars_file_rendered(module_calls):
    calls = {call["name"]: call for call in module_calls["awx.awx.job_template"]}
    assert sorted(calls) == sorted(NAMES)
    credentials = [call["name"] for call in module_calls["awx.awx.credential"]]
    for template in TEMPLATES:
        call = calls[template["name"]]
        assert call["playbook"] == template["playbook"] and call["job_type"] == template["job_type"]
        assert call["credentials"] == credentials
        assert call["survey_enabled"] is True
        assert call["survey_spec"] == {"name": template["name"], "description": template["description"],
                                       "spec": template["survey"]}
        # AWX renders these when the job runs, not awx-configure.yml
        assert call["extra_vars"] == dict(template["extra_vars"], kvmsec_awx_report_dir=SITE["kvmsec_awx_report_dir"])
    schedule = module_calls["awx.awx.schedule"][0]
    audit = next(template for template in TEMPLATES if template["playbook"] == "playbooks/audit-kvm.yml")
    assert schedule["unified_job_template"] == audit["name"] and "FREQ=WEEKLY" in schedule["rrule"]


def test_the_playbook_passes_secrets_only_to_tasks_without_logs():
    secret = re.compile(r"\{\{ kvmsec_awx_\w*(password|ssh_key|oauthtoken)")
    for task in yaml.safe_load(PLAYBOOK.read_text())[0]["tasks"]:
        if secret.search(json.dumps({key: value for key, value in task.items() if key != "name"})):
            assert task.get("no_log") is True, task["name"]


def test_the_playbook_variables_are_documented():
    used = set(re.findall(r"(?<![_\w])kvmsec_awx_[a-z_]*[a-z]", PLAYBOOK.read_text())) - {"kvmsec_awx_job_templates"}
    missing = sorted(name for name in used if "`%s`" % name not in AWX_DOC)
    assert not missing, "docs/awx.md does not document %s" % missing


def test_requirements_yml_is_galaxy_yml_dependencies():
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())["dependencies"]
    requirements = yaml.safe_load((ROOT / "requirements.yml").read_text())["collections"]
    assert {entry["name"]: entry["version"] for entry in requirements} == galaxy
    assert "awx.awx" not in galaxy


def test_the_ansible_package_carries_the_dependencies():
    # requirements-dev.txt pins the `ansible` package for exactly this: no galaxy server here
    import ansible_collections

    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())["dependencies"]
    for name, versions in dict(galaxy, **{"awx.awx": "*"}).items():
        manifests = [Path(base, *name.split("."), "MANIFEST.json") for base in ansible_collections.__path__]
        manifest = next((path for path in manifests if path.is_file()), None)
        assert manifest, "%s is not installed" % name
        version = json.loads(manifest.read_text())["collection_info"]["version"]
        assert versions == "*" or version in SpecifierSet(versions), (name, version, versions)


def test_examples_ansible_cfg_sets_what_docs_awx_md_says():
    # a misspelt key is silently ignored: ask Ansible what it read from the file
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-config"), "dump", "--only-changed", "-t", "all"],
                          capture_output=True, text=True, check=False, cwd=ROOT / "examples",
                          env={"ANSIBLE_CONFIG": str(ROOT / "examples" / "ansible.cfg"), "PATH": "/usr/bin:/bin",
                               "HOME": str(Path.home())})
    assert proc.returncode == 0, proc.stderr
    for setting in ("DEFAULT_FORKS(%s) = 25", "pipelining(%s) = True", "timeout(%s) = 30"):
        assert setting % (ROOT / "examples" / "ansible.cfg") in proc.stdout, setting
    assert re.search(r"ssh_args\(.*\) = .*-o ControlMaster=auto -o ControlPersist=\d+s", proc.stdout)
