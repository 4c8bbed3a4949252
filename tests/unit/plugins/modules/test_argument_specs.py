"""The modules' argument specs, read from each module's own main() without running it.

AnsibleModule is replaced, inside the module under test only, by a stand-in that records the
spec and stops: the modules build their specs in main(), and nothing else of them runs. The
arguments a module may read before AnsibleModule starts are empty, as in ansible-test's probe.
"""

import importlib
import re

import pytest
import yaml
from ansible.module_utils import basic

from ansible_collections.kvmsec.hardening.plugins.module_utils._libvirt import URI_SPEC

# control_results runs as an action plugin on the controller: its module file is documentation
MODULES = ["apparmor_profiles", "audit_rules", "auditd_conf", "cgroup_weight", "guest_policy", "guest_state",
           "host_firewall", "kernel_settings", "kvm_host_info", "libvirt_conf", "pool_images", "qcow2_encrypt",
           "selinux_module", "selinux_settings", "svirt_label", "vfio_bind"]
LIBVIRT_MODULES = ["cgroup_weight", "guest_policy", "guest_state", "pool_images", "qcow2_encrypt", "svirt_label"]
# options whose values are secrets themselves, not the name of where one is kept
SECRETS = {"qcow2_encrypt": ["passphrase", "old_passphrase"], "libvirt_conf": ["secret_settings"]}
LOOKS_SECRET = re.compile(r"pass|secret|key|token", re.I)


class Recorded(Exception):
    pass


def spec_of(name, monkeypatch):
    module = importlib.import_module("ansible_collections.kvmsec.hardening.plugins.modules." + name)
    seen = {}

    def record(**kwargs):
        seen.update(kwargs)
        raise Recorded()
    monkeypatch.setattr(module, "AnsibleModule", record)
    # what ansible-test's argument-spec probe does too: no arguments to read before AnsibleModule
    monkeypatch.setattr(basic, "_load_params", lambda: {})
    with pytest.raises(Recorded):
        module.main()
    return seen["argument_spec"], seen


def options(spec, prefix=""):
    for name, option in spec.items():
        yield prefix + name, option
        if option.get("options"):
            yield from options(option["options"], prefix + name + ".")


@pytest.mark.parametrize("name", MODULES)
def test_every_module_supports_check_mode(name, monkeypatch):
    dummy, kwargs = spec_of(name, monkeypatch)
    assert kwargs.get("supports_check_mode") is True


@pytest.mark.parametrize("name", MODULES)
def test_secrets_are_no_log_and_every_option_that_looks_secret_says_what_it_is(name, monkeypatch):
    spec, dummy = spec_of(name, monkeypatch)
    for option, settings in options(spec):
        short = option.rsplit(".", 1)[-1]
        if short in SECRETS.get(name, []):
            assert settings.get("no_log") is True, "%s.%s holds a secret: no_log must be true" % (name, option)
        elif LOOKS_SECRET.search(short):
            assert "no_log" in settings, ("%s.%s looks like a secret: say no_log true, or false for a path or "
                                          "a UUID" % (name, option))


@pytest.mark.parametrize("name", LIBVIRT_MODULES)
def test_every_libvirt_module_has_the_one_uri_option(name, monkeypatch):
    spec, dummy = spec_of(name, monkeypatch)
    assert spec["uri"] == URI_SPEC["uri"]
    assert not [option for option in spec if option.endswith("_uri")]


# keys of a task's result that Ansible itself reads: a module returning "skipped" (a list of what
# it left out, say) makes Ansible report the task as skipped and the control as passing
RESERVED_RESULT_KEYS = {"changed", "failed", "skipped", "unreachable", "results", "ansible_facts"}


@pytest.mark.parametrize("name", MODULES + ["control_results"])
def test_no_module_returns_a_key_ansible_reads_as_its_own(name):
    module = importlib.import_module("ansible_collections.kvmsec.hardening.plugins.modules." + name)
    returned = yaml.safe_load(module.RETURN) or {}
    assert not RESERVED_RESULT_KEYS & set(returned), sorted(RESERVED_RESULT_KEYS & set(returned))
