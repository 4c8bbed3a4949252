"""guest_policy against this machine's real libvirtd (libvirt 9.0, Debian 12).

Real here: libvirt's own handling of the definitions the module writes - whether it keeps a
balloon that is off or adds its default one back, whether the fixed XML is valid, what a running
guest's live XML shows - the network filters libvirt ships, the guest lookup and the check mode
that predicts the real run. Guests are TCG guests with no OS; only one is started, for the
restart report. The CPU rules judge KVM guests only: one is defined and never started (libvirt
offers the kvm domain type here, since /dev/kvm exists, but this machine's KVM cannot run one).
The module is narrowed to the test's guests with ``guests``, since the daemon is shared with the
rest of the tier.
"""

import subprocess

import pytest

from ansible_jobs import run_module, tcg_guest_xml

PREFIX = "kvmsec-gp-"
VIOLATIONS = {
    # no <memballoon>: libvirt adds a virtio one; a console on every address, with a password
    "open": "<graphics type='vnc' port='-1' autoport='yes' listen='0.0.0.0' passwd='vnc-s3ct'>"
            "<listen type='address' address='0.0.0.0'/></graphics>",
    # an unfiltered bridge interface and an ivshmem device
    "nic": "<memballoon model='none'/>"
           "<interface type='bridge'><mac address='52:54:00:6b:70:01'/><source bridge='kvmsec-gp-br'/>"
           "<model type='virtio'/></interface><shmem name='kvmsec-gp-shm'><model type='ivshmem-plain'/>"
           "<size unit='M'>4</size></shmem>",
    # started as it is: a balloon in the running guest until it starts again
    "run": "",
    # a KVM guest (defined only: this machine's KVM cannot run guests) on a named CPU model with a
    # mitigation turned off
    "cpu": "<memballoon model='none'/>",
}
KVM_CPU = ("<cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model>"
           "<feature policy='disable' name='spec-ctrl'/></cpu>")


def definition(suffix, devices):
    xml = tcg_guest_xml(PREFIX + suffix, devices)
    if suffix == "cpu":
        xml = xml.replace("<domain type='qemu'>", "<domain type='kvm'>")
        xml = xml.replace("<vcpu>1</vcpu>", "<vcpu>1</vcpu>" + KVM_CPU)
    return xml


def virsh(*args, check=True):
    proc = subprocess.run(["virsh", "-c", "qemu:///system"] + list(args), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError("virsh %s failed: %s" % (" ".join(args), proc.stderr))
    return proc.stdout


@pytest.fixture(scope="module")
def guests(libvirtd, tmp_path_factory):
    directory = tmp_path_factory.mktemp("guest-policy")
    names = []
    for suffix, devices in VIOLATIONS.items():
        name = PREFIX + suffix
        path = directory / (name + ".xml")
        path.write_text(definition(suffix, devices))
        virsh("define", str(path))
        names.append(name)
    virsh("start", PREFIX + "run")
    yield names
    for name in names:
        virsh("destroy", name, check=False)
        virsh("undefine", name, check=False)


def policy(names, *flags):
    rc, result, output = run_module("guest_policy", {"guests": names}, *flags, timeout=120)
    assert rc == 0, output
    return result, output


def by_name(result):
    return dict((guest["name"], guest) for guest in result["guests"])


def test_check_mode_predicts_the_run_libvirt_keeps_and_a_second_run_changes_nothing(guests):
    before = dict((name, virsh("dumpxml", "--inactive", name)) for name in guests)
    planned, output = policy(guests, "--check", "--diff")
    assert dict((name, virsh("dumpxml", "--inactive", name)) for name in guests) == before
    assert "vnc-s3ct" not in output
    assert planned["changed"] and planned["restart_required"] == [PREFIX + "run"]
    assert planned["problems"] == [PREFIX + "nic: ivshmem: ivshmem device kvmsec-gp-shm: memory shared with other "
                                   "guests or the host; remove the device or add an exception"]
    rules = dict((name, [(v["rule"], v["status"]) for v in guest["violations"]])
                 for name, guest in by_name(planned).items())
    assert rules == {PREFIX + "cpu": [("cpu_mode", "fixed"), ("cpu_mitigations", "fixed")],
                     PREFIX + "nic": [("nwfilter", "fixed"), ("ivshmem", "open")],
                     PREFIX + "open": [("memballoon", "fixed"), ("graphics_listen", "fixed")],
                     PREFIX + "run": [("memballoon", "fixed")]}

    done, output = policy(guests)
    assert "vnc-s3ct" not in output
    assert [(g["name"], g["changed"]) for g in done["guests"]] == [(g["name"], g["changed"]) for g in planned["guests"]]
    assert done["problems"] == planned["problems"] and done["restart_required"] == [PREFIX + "run"]
    opened = virsh("dumpxml", "--inactive", PREFIX + "open")
    assert "<memballoon model='none'/>" in opened and "listen='127.0.0.1'" in opened and "0.0.0.0" not in opened
    assert "<filterref filter='clean-traffic'/>" in virsh("dumpxml", "--inactive", PREFIX + "nic")
    cpu = virsh("dumpxml", "--inactive", PREFIX + "cpu")
    assert "<cpu mode='host-passthrough'" in cpu and "spec-ctrl" not in cpu and "qemu64" not in cpu
    # the running guest keeps its balloon until libvirt starts it again
    assert "<memballoon model='virtio'>" in virsh("dumpxml", PREFIX + "run")

    again, dummy = policy(guests)
    assert not again["changed"] and again["restart_required"] == [PREFIX + "run"]
    assert by_name(again)[PREFIX + "run"]["running_violations"][0]["rule"] == "memballoon"


def test_an_unknown_guest_and_a_bad_rule_fail_before_anything_changes(guests):
    rc, result, dummy = run_module("guest_policy", {"guests": [PREFIX + "nosuch"]}, timeout=120)
    assert rc != 0 and "guests: no libvirt domain %snosuch on this host" % PREFIX in result["msg"]
    rc, result, dummy = run_module("guest_policy", {"guests": guests, "exceptions": [
        {"guest": PREFIX + "nic", "rules": ["ivshmem"], "reason": ""}]}, timeout=120)
    assert rc != 0 and "exceptions[0] (guest %snic): reason is empty" % PREFIX in result["msg"]
