"""Every role documents exactly the variables it has: argument_specs is the single source.

For each role: the public defaults and the options in meta/argument_specs.yml are the same
names with the same default values, every name carries the role's prefix, the role has an
on/off toggle, and the README mentions every option.
"""

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
