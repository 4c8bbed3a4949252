"""selinux_module through Ansible on the development machine, which has no SELinux policy.

What can be real here is real: the module runs through ``ansible localhost``, from the venv's
interpreter and from one without the SELinux bindings (the module must re-run itself under the
system Python), and meets a host whose SELinux is not installed. Everything that needs a policy
store runs in the lab VM (tests/integration/on_lab_vm/test_selinux_lab.py).
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from ansible_jobs import run_module

TE = "module kvmsec_it 1.0;\nrequire { type virtd_t; class capability2 perfmon; }\nallow virtd_t self:capability2 perfmon;\n"


def has_policy():
    return any(Path("/etc/selinux").glob("*/policy/policy.*"))


def module(args, interpreter=sys.executable):
    """Run the module once; (return code, result dict)."""
    rc, result, dummy = run_module("selinux_module", args, interpreter=interpreter)
    return rc, result


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """A Python without the SELinux bindings (a venv without system site packages)."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    probe = subprocess.run([python, "-c", "import selinux"], capture_output=True, check=False)
    assert probe.returncode != 0, "the bare venv sees the selinux bindings"
    return python


@pytest.mark.skipif(has_policy(), reason="this machine has an SELinux policy installed")
@pytest.mark.parametrize("interpreter", ["venv", "bare"])
def test_host_without_selinux_policy_gets_a_clear_error(tmp_path, bare_python, interpreter):
    state_dir = tmp_path / "state"
    rc, result = module({"name": "kvmsec_it", "content": TE, "state_dir": str(state_dir)},
                        interpreter=sys.executable if interpreter == "venv" else bare_python)
    assert rc != 0
    message = result["msg"]
    # the bindings were found (directly or by respawning): the error is about the host
    assert re.search("SELinux policy .* is not installed on this host|this host has no SELinux "
                     "configuration", message), message
    assert "selinux-policy-default" in message and "kvmsec.hardening.selinux role" in message
    assert not state_dir.exists()


@pytest.mark.parametrize("args, message", [
    ({"name": "9lives", "content": TE}, "module name '9lives' is not valid"),
    ({"modules": [{"name": "a", "content": TE}, {"name": "a", "state": "absent"}]},
     "module a is listed twice"),
    ({"name": "a"}, "state present needs a source"),
    ({"name": "a", "modules": [{"name": "b", "state": "absent"}]}, "mutually exclusive"),
    ({"modules": [{"name": "b", "state": "absent"}], "content": TE}, "mutually exclusive"),
    ({"name": "a", "content": TE, "state": "installed"}, "value of state must be one of"),
    # the input's fault is named before the host's (this machine has no SELinux policy)
    ({"name": "a", "src": "/nonexistent/a.te"},
     "module a: src /nonexistent/a.te cannot be read (No such file or directory): give the path of a "
     "readable .te, .cil or .pp file on the managed host"),
    ({"name": "a", "content": ""}, "module a: content is empty: give the text of a .te or .cil module"),
    ({"name": "a", "content": "(allow a b (file (read))", "format": "cil"},
     "module a: the CIL source does not parse: Open parenthesis without matching close at line 1"),
    ({"name": "kvmsec_it", "content": TE, "priority": 1000}, "priority must be 1-999"),
    ({"name": "kvmsec_it", "content": TE, "keep_versions": 1}, "keep_versions must be at least 2"),
])
@pytest.mark.parametrize("check", [False, True])
def test_bad_input_says_what_is_wrong(tmp_path, args, message, check):
    rc, result, dummy = run_module("selinux_module", dict(args, state_dir=str(tmp_path / "state")),
                                   *(["--check"] if check else []))
    assert rc != 0 and message in result["msg"], result
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("check", [False, True])
def test_a_state_dir_that_is_a_file_is_refused_in_check_mode_too(tmp_path, check):
    state = tmp_path / "state"
    state.write_text("a file\n")
    rc, result, dummy = run_module("selinux_module", {"name": "kvmsec_it", "content": TE, "state_dir": str(state)},
                                   *(["--check"] if check else []))
    assert rc != 0 and "state_dir %s is not a directory: give the path of a directory" % state in result["msg"]
    assert state.read_text() == "a file\n"
