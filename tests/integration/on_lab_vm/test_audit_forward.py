"""KVM-AUDIT-04 on the lab: audit records reach a real collector, and none is lost while it is down.

The collector (tests/lab_vm/syslog_collector.py) is syslog over TLS on this machine's loopback,
requiring client certificates of its own CA; the lab VM reaches it at 10.0.2.2 through QEMU's
user network, as a host reaches its fleet's collector, on a port of its own, which the role
labels for syslog over TLS. The CA and both certificates are made here, in a temporary
directory. The role runs for real on the SELinux-enforcing host, with its policy module, so each
record that arrives was read and sent by a confined rsyslog.

Molecule's verify proves a guest's start reaching the collector on both LSMs; this file proves
the queue: 1,200 records made while the collector is down, with an rsyslog restart in between
(the queue kept on disk), all arrive once it is back.
"""

import json
import socket
import tempfile
from pathlib import Path

import pytest

# tests/lab_vm, on sys.path (conftest)
from syslog_collector import COLLECTOR_NAME, Collector, make_pki  # pylint: disable=import-error

# records made on each side of the restart while the collector is down
HALF = 600
CONTROLS = ("KVM-AUDIT-01", "KVM-AUDIT-02", "KVM-AUDIT-03", "KVM-AUDIT-04")
PLAY = [{"hosts": "kvm_hosts", "gather_facts": True, "gather_subset": ["min"],
         "roles": [{"role": "kvmsec.hardening.audit_trail"}]}]


@pytest.fixture(scope="module")
def pki():
    """The PKI's paths, and its PEM texts as the inventory gives them (the host's key from vault)."""
    with tempfile.TemporaryDirectory(prefix="kvmsec-collector-") as tmp:
        paths = make_pki(tmp)
        yield dict(paths=paths, **dict((name, Path(path).read_text()) for name, path in paths.items()))


@pytest.fixture(scope="module")
def collector(pki):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    paths = pki["paths"]
    with Collector(str(Path(paths["ca"]).parent / "messages"), paths["collector_cert"], paths["collector_key"],
                   paths["ca"], port) as running:
        yield running


@pytest.fixture(scope="module")
def vm(request, lab_vm):
    """The hardened host the README's main command left, when test_kvm_host runs in this session
    (a boot fewer), else a pristine one: the role needs nothing else on the host."""
    if any(Path(str(item.fspath)).name == "test_kvm_host.py" for item in request.session.items):
        return request.getfixturevalue("main_vm")
    return lab_vm("forward-lab")


def forward(vm, pki, collector, check=False):
    extra_vars = dict(audit_trail_forward_enabled=True, audit_trail_forward_target="10.0.2.2",
                      audit_trail_forward_port=collector.port, audit_trail_forward_peers=[COLLECTOR_NAME],
                      audit_trail_forward_ca_cert=pki["ca"], audit_trail_forward_client_cert=pki["host_cert"],
                      audit_trail_forward_client_key=pki["host_key"], audit_trail_forward_retry_interval=5,
                      kvmsec_skip_controls=[control for control in CONTROLS if control != "KVM-AUDIT-04"])
    with tempfile.TemporaryDirectory() as tmp:
        playbook = Path(tmp, "forward.yml")
        playbook.write_text(json.dumps(PLAY))
        proc = vm.playbook(playbook, extra_vars=extra_vars, check=check, diff=check)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert pki["host_key"].splitlines()[1] not in output, "the host's key is in Ansible's output"
    return output


def changed(output):
    return int(output.split("PLAY RECAP")[1].split("changed=")[1].split()[0])


def markers(messages, prefix):
    return {message.split("msg='text=")[1].split()[0] for message in messages
            if "msg='text=%s" % prefix in message}


def test_check_mode_predicts_the_forwarding_and_the_run_sets_it_up_once(vm, pki, collector):
    conf = "/etc/rsyslog.d/60-kvmsec-audit-forward.conf"
    predicted = forward(vm, pki, collector, check=True)
    assert changed(predicted) > 0 and "kvmsec_audit_forward" in predicted
    assert vm.ssh("test -e %s" % conf, check=False).returncode == 1, "check mode wrote the configuration"
    assert changed(forward(vm, pki, collector)) > 0
    assert changed(forward(vm, pki, collector)) == 0
    assert "kvmsec_audit_forward" in vm.ssh("semodule -l").stdout
    # the collector saw this host's certificate, and records of this host
    vm.ssh("auditctl -m kvmsec-forward-up")
    arrived = collector.wait_for(lambda messages: any("kvmsec-forward-up" in m for m in messages), 60)
    assert any("kvmsec-forward-up" in message for message in arrived), vm.ssh("journalctl -u rsyslog -n 20").stdout
    assert {"commonName": "kvmlab"} in collector.peers


def test_records_made_while_the_collector_is_down_all_arrive_when_it_is_back(vm, collector):
    collector.stop()
    # more records than rsyslog's default queue holds (1,000, which stalled forwarding for good),
    # with rsyslog restarted halfway (its queue goes to disk and comes back)
    vm.ssh("for i in $(seq 1 %d); do auditctl -m kvmsec-while-down-$i; done; systemctl restart rsyslog; "
           "for i in $(seq %d %d); do auditctl -m kvmsec-while-down-$i; done" % (HALF, HALF + 1, 2 * HALF))
    assert not markers(collector.messages(), "kvmsec-while-down-")
    queued = vm.ssh("ls /var/spool/rsyslog").stdout
    assert "kvmsec_audit_forward" in queued, queued
    collector.start()
    wanted = {"kvmsec-while-down-%d" % index for index in range(1, 2 * HALF + 1)}
    arrived = collector.wait_for(lambda messages: markers(messages, "kvmsec-while-down-") >= wanted, 120)
    missing = wanted - markers(arrived, "kvmsec-while-down-")
    assert not missing, "lost: %s\n%s" % (sorted(missing), vm.ssh("journalctl -u rsyslog -n 30").stdout)
