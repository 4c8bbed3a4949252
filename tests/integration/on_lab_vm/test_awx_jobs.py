"""The two job templates run as AWX runs them, against the hardened VM the README's main command
left: ansible-runner, a private data directory laid out as AWX lays out /runner, Ansible's own
strategy, and the job's status and artifacts read the way AWX reads them.

- ``project/``: what the project's checkout holds (what git ships), with examples/ansible.cfg
  at its root as docs/awx.md tells a site's fork to put it;
- ``inventory/``: the synced inventory (the lab host in kvm_hosts, the lab's group_vars), with
  no key in it;
- ``env/extravars``: the job template's extra vars and the survey's default answers, written as
  AWX writes them (tests/awx_job_templates.py), and AWX's ``awx_job_id``;
- ``env/ssh_key``: the machine credential's key, which ansible-runner hands to an ssh-agent;
- the execution environment's collections: this collection built from what git ships and
  installed ``--offline`` as execution-environment.yml installs it; its dependencies come from
  the ``ansible`` package of the virtualenv, as the EE's come from requirements.yml.

A sysctl changed by hand makes the audit job (launched with that control's tag, as AWX lets an
operator launch it) fail, and its artifacts name the control; the hardening job fixes exactly
that on a host the main command already hardened; the full audit job then succeeds. The VM stays
hardened for test_vfio_bind.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import ansible_runner
import pytest
import yaml
from ansible_jobs import Job, private_data_dir
from awx_job_templates import awx_extravars, default_answers, job_templates

ROOT = Path(__file__).resolve().parents[3]
TEMPLATES = dict((template["name"], template) for template in job_templates())
DRIFT = ("KVM-KERNEL-01", "kernel.kptr_restrict", "0", "2")
HEALTHY = {"pass", "not applicable"}
# a whole run of Ansible's own strategy on the emulated host takes 1.5-3 minutes
JOB_TIMEOUT = 900


def galaxy(collections, *args):
    # only the EE's directory is configured: ansible-galaxy would see this tree's own link in
    # .cache/collections as the collection installed already
    proc = subprocess.run(["ansible-galaxy", "collection"] + list(args), capture_output=True, text=True,
                          check=False, timeout=300, env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections)))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def execution_environment(tmp_path_factory, shipped):
    """The EE's collections directory."""
    tmp = tmp_path_factory.mktemp("ee")
    shipped(tmp / "src")
    collections = tmp / "collections"
    galaxy(collections, "build", "--output-path", str(tmp), str(tmp / "src"))
    tarball = next(tmp.glob("kvmsec-hardening-*.tar.gz"))
    galaxy(collections, "install", "--offline", "-p", str(collections), str(tarball))
    assert (collections / "ansible_collections" / "kvmsec" / "hardening" / "MANIFEST.json").is_file()
    return collections


class AwxJob(Job):
    """A finished job as AWX sees it: Job's status, exit code, events and output, and its
    artifacts (set_stats data, which AWX stores with the job)."""

    def __init__(self, runner, report_dir):
        super().__init__(runner)
        stats = [event for event in self.events if event["event"] == "playbook_on_stats"]
        self.artifacts = stats[-1]["event_data"].get("artifact_data", {}) if stats else {}
        self.report_dir = report_dir

    def results(self):
        return self.artifacts["kvmsec_results"]

    def failures(self):
        """The messages of the tasks that failed, as the job's events carry them."""
        return [" ".join(event["event_data"]["res"].get("msg", "").split())
                for event in self.events if event["event"] == "runner_on_failed"]


@pytest.fixture(scope="module")
def launch(main_vm, execution_environment, tmp_path_factory, shipped):
    """launch(TEMPLATE, job_tags) -> AwxJob; launch.jobs: every job launched so far."""
    reports = tmp_path_factory.mktemp("awx-reports")
    job_ids = iter(range(4201, 4300))

    def run(template_name, job_tags=None):
        template, job_id = TEMPLATES[template_name], next(job_ids)
        # in memory-backed storage and removed after the job, as AWX does with /runner: it holds
        # the key, and ansible-runner writes the job's whole environment into its artifacts
        private = Path(private_data_dir())
        try:
            job = AwxJob(start(template, job_id, private, job_tags), reports / str(job_id))
        finally:
            shutil.rmtree(private, ignore_errors=True)
        run.jobs.append(job)
        return job

    def start(template, job_id, private, job_tags):
        vm = main_vm
        shipped(private / "project")
        (private / "project" / ".venv").unlink()
        shutil.copy(ROOT / "examples" / "ansible.cfg", private / "project" / "ansible.cfg")
        inventory = private / "inventory"
        shutil.copytree(ROOT / "tests" / "lab_vm" / "inventory" / "group_vars", inventory / "group_vars")
        (inventory / "hosts.yml").write_text(yaml.safe_dump({"kvm_hosts": {"hosts": {vm.name: {
            "ansible_host": vm.info["host"], "ansible_port": vm.info["port"], "ansible_user": "root",
            "ansible_ssh_common_args": "-o UserKnownHostsFile=/dev/null -o ServerAliveInterval=15"}}}}))
        env = private / "env"
        env.mkdir()
        (env / "extravars").write_text(awx_extravars(template, default_answers(template), job_id, str(reports)))
        shutil.copy(vm.info["key"], env / "ssh_key")
        return ansible_runner.run(
            private_data_dir=str(private), playbook=template["playbook"], tags=job_tags, quiet=True,
            timeout=JOB_TIMEOUT, cancel_callback=lambda: False, envvars={
                "ANSIBLE_COLLECTIONS_PATH": str(execution_environment),
                # AWX's default (AWX_TASK_ENV): every lab VM has a new host key
                "ANSIBLE_HOST_KEY_CHECKING": "False",
                # an EE has no Mitogen: this machine's environment may name its strategy
                "ANSIBLE_STRATEGY": "linear",
                "PATH": "%s:%s" % (ROOT / ".venv" / "bin", os.environ.get("PATH", ""))})
    run.jobs = []
    return run


def drift(vm):
    dummy, key, drifted, dummy2 = DRIFT
    vm.ssh("sysctl -w %s=%s" % (key, drifted))


def test_audit_job_fails_on_drift_and_its_artifacts_name_the_control(main_vm, launch):
    control, key, drifted, dummy = DRIFT
    drift(main_vm)
    job = launch("Audit KVM hosts", job_tags=control)
    assert (job.status, job.rc != 0) == ("failed", True), job.output[-4000:]
    results = job.results()
    assert results["mode"] == "audit" and results["hosts"][main_vm.name][control] == "fail", results
    assert results["gate"]["failing"] == [{"host": main_vm.name, "id": control}]
    # the gate's failed task is the job's failure, naming host and control
    assert [msg for msg in job.failures() if "failed: %s %s." % (main_vm.name, control) in msg], job.failures()
    # the audit changed nothing
    assert main_vm.ssh("sysctl -n %s" % key).stdout.strip() == drifted
    report = json.loads((job.report_dir / (main_vm.name + ".json")).read_text())
    assert next(c for c in report["controls"] if c["id"] == control)["status"] == "fail"


def test_harden_job_fixes_exactly_the_drift_then_the_audit_job_passes(main_vm, launch):
    control, key, dummy, hardened = DRIFT
    drift(main_vm)
    job = launch("Harden KVM hosts")
    assert (job.status, job.rc) == ("successful", 0), job.output[-4000:]
    statuses = job.results()["hosts"][main_vm.name]
    assert statuses[control] == "fixed"
    assert dict((cid, status) for cid, status in statuses.items() if cid != control and status not in HEALTHY) == {}
    assert main_vm.ssh("sysctl -n %s" % key).stdout.strip() == hardened
    audit = launch("Audit KVM hosts")
    assert (audit.status, audit.rc) == ("successful", 0), audit.output[-4000:]
    results = audit.results()
    assert results["gate"]["passed"] and set(results["hosts"][main_vm.name].values()) <= HEALTHY, results
    assert len(results["hosts"][main_vm.name]) == len(statuses)
    # the machine credential's key reached the agent, never a job's events
    assert not [event for done in launch.jobs for event in done.events if "PRIVATE KEY" in json.dumps(event)]
