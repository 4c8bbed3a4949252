"""Every role documents exactly the variables it has: argument_specs is the single source.

For each role: the public defaults and the options in meta/argument_specs.yml are the same
names with the same default values, every name carries the role's prefix, the role has an
on/off toggle, and the README mentions every option.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROLES = Path(__file__).resolve().parents[2] / "roles"
ROLE_NAMES = sorted(p.name for p in ROLES.iterdir() if (p / "tasks" / "main.yml").exists())


def load(path):
    with open(path) as handle:
        return yaml.safe_load(handle) or {}


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_argument_specs_match_defaults(role):
    defaults = load(ROLES / role / "defaults" / "main.yml")
    options = load(ROLES / role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert sorted(defaults) == sorted(options)
    for name, spec in options.items():
        assert name.startswith(role + "_"), name
        assert spec.get("description"), name
        assert spec.get("default") == defaults[name], name


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_role_has_toggle_and_readme(role):
    defaults = load(ROLES / role / "defaults" / "main.yml")
    assert isinstance(defaults.get(role + "_enabled"), bool)
    readme = (ROLES / role / "README.md").read_text()
    missing = [name for name in defaults if name not in readme]
    assert not missing, "README.md of %s does not document %s" % (role, missing)


def test_role_readme_variable_tables_are_generated_from_the_argument_specs():
    done = subprocess.run([sys.executable, str(ROLES.parent / "scripts" / "role_docs.py"), "--check"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def set_and_registered(tasks):
    """The variables a task list sets (set_fact) or registers, blocks included."""
    for task in tasks or []:
        if not isinstance(task, dict):
            continue
        if "register" in task:
            yield task["register"]
        facts = task.get("ansible.builtin.set_fact") or task.get("set_fact")
        if isinstance(facts, dict):
            for name in facts:
                if name != "cacheable":
                    yield name
        for key in ("block", "rescue", "always"):
            yield from set_and_registered(task.get(key))


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_what_a_role_sets_is_internal_or_documented_as_published(role):
    files = sorted((ROLES / role / "tasks").glob("*.yml")) + sorted((ROLES / role / "handlers").glob("*.yml"))
    names = set(name for path in files for name in set_and_registered(load(path) or []))
    readme = (ROLES / role / "README.md").read_text()
    public = sorted(name for name in names if not name.startswith("__%s_" % role))
    assert all(name.startswith(role + "_") for name in public), "%s sets %s: internals are __%s_*" % (
        role, public, role)
    undocumented = [name for name in public if not re.search(r"`%s[`.]" % name, readme)]
    assert not undocumented, "%s publishes %s without a word in its README (or name them __%s_*)" % (
        role, undocumented, role)


def test_the_lab_passes_the_kernel_roles_default_arguments_to_a_kernel_it_starts_directly():
    sys.path.insert(0, str(ROLES.parent / "tests" / "lab_vm"))
    import kvmlab  # pylint: disable=import-outside-toplevel
    defaults = yaml.safe_load((ROLES / "kernel" / "defaults" / "main.yml").read_text())
    role_vars = yaml.safe_load((ROLES / "kernel" / "vars" / "main.yml").read_text())
    wanted = role_vars["__kernel_smt_arguments"][defaults["kernel_smt_policy"]] + defaults["kernel_self_protection_arguments"]
    assert kvmlab.BASELINE_ARGS.split() == wanted
