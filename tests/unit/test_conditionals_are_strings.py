"""Every conditional in the project's YAML is a string (or a boolean).

A plain YAML scalar holding ": " is read as a mapping, so an assert line such as
``- x is search('a: b')`` stops being a condition; Ansible only says so when the task runs, in a
lab step minutes into CI. This reads every playbook, role and Molecule file the way YAML does.
"""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("that", "when", "failed_when", "changed_when", "until")
FILES = sorted(path for folder in ("molecule", "playbooks", "roles", "tests")
               for path in (ROOT / folder).rglob("*.yml") if ".cache" not in path.parts)


def conditionals(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in KEYS:
                yield from (value if isinstance(value, list) else [value])
            yield from conditionals(value)
    elif isinstance(node, list):
        for value in node:
            yield from conditionals(value)


@pytest.mark.parametrize("path", FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_conditionals_are_strings(path):
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        pytest.skip("not plain YAML (a template)")
    wrong = [item for item in conditionals(data) if not isinstance(item, (str, bool))]
    assert wrong == [], "conditions YAML reads as something else (quote them, or avoid ': '): %r" % wrong
