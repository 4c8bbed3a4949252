"""svirt_label against this machine's real libvirtd, which has no SELinux or AppArmor driver.

What can be real here: the module finds libvirt-python by respawning under the system Python
when its interpreter lacks it, reads the host's security models from the real daemon, and
refuses - with the reason and the fix - to pretend it confines anything on a host whose libvirt
offers only the ``none`` and ``dac`` models. Labels, processes and images are tested for real in
the SELinux and AppArmor lab VMs (tests/integration/on_lab_vm/test_svirt_lab.py).
"""

import subprocess
import sys

from ansible_jobs import VENV_PYTHON, run_module


def module(args, interpreter=VENV_PYTHON):
    rc, result, dummy = run_module("svirt_label", args, interpreter=interpreter, timeout=120)
    return rc, result


def test_a_host_without_an_lsm_driver_is_refused_with_the_fix(libvirtd):
    rc, result = module({"uri": libvirtd})
    assert rc != 0
    assert "no SELinux or AppArmor driver (security models: none, dac)" in result["msg"]
    assert "security_driver" in result["msg"]


def test_a_guest_that_does_not_exist_is_named_first(libvirtd):
    for check in (False, True):
        rc, result, dummy = run_module("svirt_label", {"uri": libvirtd, "guests": [{"name": "kvmsec-no-such-guest"}]},
                                       *(["--check"] if check else []), timeout=120)
        assert rc != 0 and "guests[].name: no libvirt domain kvmsec-no-such-guest on this host (give a name or " \
            "UUID); its domains:" in result["msg"], result


def test_an_explicit_model_the_host_lacks_is_named(libvirtd):
    rc, result = module({"uri": libvirtd, "model": "selinux"})
    assert rc != 0
    assert "has no selinux security driver (it has: none, dac)" in result["msg"]


def test_respawns_under_the_system_python_when_libvirt_is_missing(libvirtd, tmp_path):
    bare = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    python = str(bare / "bin" / "python")
    assert subprocess.run([python, "-c", "import libvirt"], capture_output=True, check=False).returncode != 0
    rc, result = module({"uri": libvirtd}, python)
    # past the import: the answer comes from the real daemon, not missing_required_lib
    assert rc != 0 and "security models: none, dac" in result["msg"], result


def test_bad_requests_fail_before_libvirt_is_asked():
    rc, result = module({"uri": "qemu:///nowhere", "guests": [{"name": "a", "type": "static",
                                                               "label": "x", "categories": "c1,c2"}]})
    assert rc != 0 and "guest a: give label or categories, not both" in result["msg"]
    rc, result = module({"uri": "qemu:///nowhere", "guests": [{"name": "a", "type": "none"}]})
    assert rc != 0 and "allow_unconfined" in result["msg"]
