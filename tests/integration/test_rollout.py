"""harden-kvm.yml's rolling-run keywords, run for real by ansible-playbook on local hosts.

The hardening play is loaded from harden-kvm.yml as it is (its serial, throttle and the
pre_tasks that stop a rollout); only its roles are replaced by one task that fails on chosen
hosts, since the roles need KVM hosts. Six inventory hosts all run locally.
"""

import pytest
import yaml

from ansible_jobs import ROOT, playbook_job

HOSTS = ["kvm%d" % n for n in range(1, 7)]


def rollout(tmp_path, failing, **extra):
    play = yaml.safe_load((ROOT / "playbooks" / "harden-kvm.yml").read_text())[0]
    for key in ("roles", "become", "gather_facts", "gather_subset"):
        play.pop(key, None)
    play.update(gather_facts=False, tasks=[
        {"name": "Harden", "ansible.builtin.fail": {"msg": "broken host"},
         "when": "inventory_hostname in %r" % failing},
        {"name": "Record the host", "ansible.builtin.debug": {"msg": "hardened {{ inventory_hostname }}"}}])
    report = {"name": "Report", "hosts": "kvm_hosts", "gather_facts": False,
              "tasks": [{"ansible.builtin.debug": {"msg": "reported {{ inventory_hostname }}"}}]}
    playbook = tmp_path / "rollout.yml"
    playbook.write_text(yaml.safe_dump([play, report], sort_keys=False))
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"kvm_hosts": {"hosts": dict((h, None) for h in HOSTS),
                                                       "vars": {"ansible_connection": "local"}}}))
    return playbook_job(playbook, inventory=str(inventory), extravars=extra, timeout=300).output


def hardened(output):
    return sorted(h for h in HOSTS if '"msg": "hardened %s"' % h in output)


def reported(output):
    return sorted(h for h in HOSTS if '"msg": "reported %s"' % h in output)


def test_a_failed_host_ends_the_remaining_batches_and_the_report_still_runs(tmp_path):
    output = rollout(tmp_path, ["kvm2"], kvmsec_serial=2)
    assert hardened(output) == ["kvm1"]
    assert "Rollout stopped: 1 of the 2 hosts of earlier batches failed (kvm2), more than " \
           "kvmsec_max_fail_percentage=0%. Not run: kvm3, kvm4, kvm5, kvm6." in " ".join(output.split())
    assert reported(output) == ["kvm1", "kvm3", "kvm4", "kvm5", "kvm6"]


@pytest.mark.parametrize("percentage, expected", [
    (30, ["kvm1", "kvm2", "kvm3", "kvm5", "kvm6"]),  # 1 failed of 4 done is 25%: allowed
    (20, ["kvm1", "kvm2", "kvm3"]),                  # 25% is more than 20%: the third batch waits
])
def test_the_allowed_share_of_failed_hosts_decides(tmp_path, percentage, expected):
    output = rollout(tmp_path, ["kvm4"], kvmsec_serial=2, kvmsec_max_fail_percentage=percentage)
    assert hardened(output) == expected


def test_without_batches_every_host_runs_and_a_throttle_is_accepted(tmp_path):
    output = rollout(tmp_path, ["kvm2"], kvmsec_throttle=2)
    assert hardened(output) == ["kvm1", "kvm3", "kvm4", "kvm5", "kvm6"] and "Rollout stopped" not in output
