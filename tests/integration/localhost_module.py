"""Run one of the collection's modules on this machine through the real ``ansible`` command."""

import json
import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = str(ROOT / ".venv" / "bin" / "ansible")
VENV_PYTHON = str(ROOT / ".venv" / "bin" / "python")
RESULT = re.compile(r"^localhost \| [A-Z!]+ => ", re.M)
TCG_GUEST_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
{devices}
  </devices>
</domain>
"""


def tcg_guest_xml(name, devices):
    """A TCG guest with no OS and the given devices: enough for libvirt to define and start it."""
    return TCG_GUEST_XML.format(name=name, devices=devices)


def run_module(name, args, *flags, interpreter=VENV_PYTHON, timeout=300):
    """Run kvmsec.hardening.NAME once on localhost: (return code, result, stdout + stderr).

    ``interpreter`` picks the Python the module runs under: one without the libvirt or SELinux
    bindings proves that the module finds the system Python that has them.
    """
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="minimal", ANSIBLE_NOCOLOR="1",
               ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".cache" / "collections"))
    proc = subprocess.run(
        [ANSIBLE, "localhost", "-i", "localhost,", "-c", "local",
         "-e", "ansible_python_interpreter=%s" % interpreter,
         "-m", "kvmsec.hardening." + name, "-a", json.dumps(args)] + list(flags),
        capture_output=True, text=True, env=env, timeout=timeout, check=False)
    match = RESULT.search(proc.stdout)
    assert match, "no module result in output:\n%s\n%s" % (proc.stdout, proc.stderr)
    return proc.returncode, json.loads(proc.stdout[match.end():]), proc.stdout + proc.stderr
