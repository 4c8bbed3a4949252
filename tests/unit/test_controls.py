"""The control catalogue is the single source, and every control is one place.

For every catalogue control: its task file exists, the role's tasks/main.yml includes it under
the control's tag and honours kvmsec_skip_controls, every task of the file (and of the files it
includes) carries the ID as a tag, and docs/controls.md is what scripts/controls_doc.py writes.
Check mode is the audit, so tasks that run in check mode for real must only read, and roles must
know an audit that runs without --check.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ansible_collections.kvmsec.hardening.plugins.plugin_utils._controls import CONTROL_ID

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = yaml.safe_load((ROOT / "playbooks" / "vars" / "controls.yml").read_text())["kvmsec_controls"]
IDS = [control["id"] for control in CATALOGUE]
FIELDS = ("id", "title", "severity", "family", "rationale", "applies_to", "role", "task_file",
          "carried_by", "audit", "impact", "references")
ROLE_TASK_FILES = sorted((ROOT / "roles").glob("*/tasks/*.yml")) + sorted((ROOT / "roles").glob("*/handlers/*.yml"))


def load(path):
    return yaml.safe_load(Path(path).read_text()) or []


def tasks_of(items, inherited=()):
    """Every task of a task list with the tags it carries, its own and its blocks'."""
    for item in items:
        tags = tuple(inherited) + tuple(item.get("tags") or ())
        if "block" in item:
            for key in ("block", "rescue", "always"):
                yield from tasks_of(item.get(key) or [], tags)
        else:
            yield item, tags


def included_files(task, directory):
    for key in ("ansible.builtin.include_tasks", "ansible.builtin.import_tasks"):
        target = task.get(key)
        if target:
            yield directory / (target if isinstance(target, str) else target["file"])


def control_tasks(task_file):
    """The tasks of a control's task file and of the files it includes, with their tags."""
    todo, seen = [ROOT / task_file], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for task, tags in tasks_of(load(path)):
            yield path, task, tags
            todo.extend(included_files(task, path.parent))


def test_ids_are_unique_and_well_formed():
    assert len(IDS) == len(set(IDS))
    for cid in IDS:
        assert CONTROL_ID.match(cid), cid


@pytest.mark.parametrize("control", CATALOGUE, ids=IDS)
def test_catalogue_entry_is_complete(control):
    missing = [field for field in FIELDS if field not in control]
    assert not missing, missing
    assert control["severity"] in ("critical", "high", "medium", "low")
    assert set(control["impact"]) == {"reboot", "restarts_libvirtd", "restarts_guests"}
    assert control["task_file"].startswith("roles/%s/tasks/" % control["role"])


@pytest.mark.parametrize("control", CATALOGUE, ids=IDS)
def test_every_task_of_the_control_carries_its_id(control):
    untagged = ["%s: %s" % (path.name, task.get("name")) for path, task, tags in control_tasks(control["task_file"])
                if control["id"] not in tags]
    assert not untagged, untagged


@pytest.mark.parametrize("control", CATALOGUE, ids=IDS)
def test_main_includes_the_task_file_under_the_tag_and_skip_list(control):
    main = ROOT / "roles" / control["role"] / "tasks" / "main.yml"
    file_name = Path(control["task_file"]).name
    includes = [(task, tags) for task, tags in tasks_of(load(main))
                if task.get("ansible.builtin.include_tasks") == file_name]
    assert len(includes) == 1, includes
    task, tags = includes[0]
    assert control["id"] in tags and "always" not in tags
    conditions = task.get("when") if isinstance(task.get("when"), list) else [task.get("when")]
    assert "'%s' not in kvmsec_skip_controls | default([])" % control["id"] in conditions


def test_no_task_carries_an_unknown_control_id():
    unknown = set()
    for path in ROLE_TASK_FILES:
        for task, tags in tasks_of(load(path)):
            unknown |= {tag for tag in tags if CONTROL_ID.match(str(tag)) and tag not in IDS}
    assert not unknown


def test_tasks_that_run_in_check_mode_only_read():
    writers = ["%s: %s" % (path.relative_to(ROOT), task.get("name")) for path in ROLE_TASK_FILES
               for task, tags in tasks_of(load(path))
               if task.get("check_mode") is False and task.get("changed_when") is not False]
    assert not writers, "check_mode: false tasks must be reads (changed_when: false): %s" % writers


def test_roles_know_the_audit_runs_in_check_mode_without_the_flag():
    # audit-kvm.yml forces check mode on the play, which leaves ansible_check_mode false
    for path in ROLE_TASK_FILES:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for use in re.finditer(r"ansible_check_mode", line):
                assert line[use.end():].startswith(" or kvmsec_audit | default(false)"), "%s:%d" % (path, number)


def test_docs_controls_md_is_generated_from_the_catalogue():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "controls_doc.py"), "--check"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
