"""Every module's RETURN against the result vocabulary of docs/development.md: a key of the
vocabulary has its type wherever it is returned, and none of the synonyms it replaced is left."""

import importlib
import re
from pathlib import Path

import pytest
import yaml

from ansible_collections.kvmsec.hardening.tests.unit.plugins.modules.test_argument_specs import MODULES

VOCABULARY = {
    "path": ("str", None),
    "changes": ("list", None),
    "missing": ("list", "str"),
    "problems": ("list", None),
    "reloaded": ("list", None),
    "reboot_required": ("bool", None),
    "restart_required": ("list", None),
    "reload_required": ("list", None),
    "backup_file": ("str", None),
}
ROOT = Path(__file__).resolve().parents[4]
# what a key of the vocabulary replaced: "not on this host" had five names
REPLACED = re.compile(r"^(unsupported|.*_missing|missing_.+|.*_skipped|skipped_(?!changes$).+)$")


def returned(name):
    module = importlib.import_module("ansible_collections.kvmsec.hardening.plugins.modules." + name)
    return yaml.safe_load(module.RETURN) or {}


def keys(documented, prefix=""):
    """Every key of RETURN, suboptions (contains) included, with its documentation."""
    for key, doc in documented.items():
        yield prefix + key, key, doc
        yield from keys(doc.get("contains") or {}, prefix + key + ".")


@pytest.mark.parametrize("name", MODULES + ["control_results"])
def test_the_vocabulary_means_one_thing_in_every_module(name):
    for where, key, doc in keys(returned(name)):
        assert not REPLACED.match(key), "%s: RV(%s) is a synonym the vocabulary replaced" % (name, where)
        if key in VOCABULARY and "." not in where:
            kind, elements = VOCABULARY[key]
            assert doc.get("type") == kind, "%s: RV(%s) is %s, the vocabulary says %s" % (name, where, doc.get("type"), kind)
            if elements:
                assert doc.get("elements") == elements, "%s: RV(%s) elements %s, not %s" % (
                    name, where, doc.get("elements"), elements)


def test_the_vocabulary_table_in_the_docs_is_the_one_checked():
    text = (ROOT / "docs" / "development.md").read_text()
    table = text[text.index("## Result vocabulary"):]
    for key in VOCABULARY:
        assert "`%s`" % key in table, key
