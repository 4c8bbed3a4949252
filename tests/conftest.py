"""pytest set-up shared by every tier: import the collection by its FQCN without installing it.

The repository root is the collection. A symlink tree .cache/collections/ansible_collections/
kvmsec/hardening -> repository root makes ``ansible_collections.kvmsec.hardening`` importable,
exactly as modules import their module_utils on a managed host.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COLLECTIONS = ROOT / ".cache" / "collections"


def _link_collection():
    link = COLLECTIONS / "ansible_collections" / "kvmsec" / "hardening"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(ROOT, target_is_directory=True)
    if str(COLLECTIONS) not in sys.path:
        sys.path.insert(0, str(COLLECTIONS))
    os.environ.setdefault("ANSIBLE_COLLECTIONS_PATH", str(COLLECTIONS))


_link_collection()


def subprocess_run(argv, data=None):
    """The cores' ``run`` contract, backed by real processes (no Ansible needed)."""
    proc = subprocess.run(list(argv), input=data, capture_output=True, check=False)
    return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")


@pytest.fixture
def run():
    return subprocess_run
