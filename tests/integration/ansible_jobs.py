"""Run the collection's modules and playbooks on this machine as AWX runs its jobs: through
ansible-runner, in a private data directory in memory-backed storage (/dev/shm), removed after
each job: ansible-runner writes the extra vars (passphrases among them) to its env/extravars and
the job's whole environment to its artifacts.

Why ansible-runner and not pytest-ansible, which the design card names: pytest-ansible 26.10's
module dispatcher, on ansible-core 2.19, never passes its ``check`` option on to Ansible (asked
for check mode, ``ansible.builtin.file state=touch`` created the file), it has no diff mode, and
its host management is deprecated upstream (ansible/pytest-ansible#468). Half of these tests are
about honest check mode and diffs, so a runner that silently applies what it was asked to predict
would make them unable to fail.
"""

import json
import os
import shlex
import shutil
import tempfile
import threading
from pathlib import Path

import ansible_runner

ROOT = Path(__file__).resolve().parents[2]
VENV_PYTHON = str(ROOT / ".venv" / "bin" / "python")
MEMORY_BACKED = "/dev/shm"
RESULT_EVENTS = ("runner_on_ok", "runner_on_failed", "runner_on_unreachable", "runner_on_skipped")
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


class Job:
    """A finished ansible-runner job: its exit status, runner status, whole output and events."""

    def __init__(self, runner):
        self.rc = runner.rc
        self.status = runner.status
        with runner.stdout as stdout:
            self.output = stdout.read()
        self.events = list(runner.events)
        self.stats = runner.stats or {}

    def result(self, host="localhost"):
        """The last task result on HOST (a module run has one), as Ansible registers it."""
        events = [event for event in self.events
                  if event["event"] in RESULT_EVENTS and event["event_data"].get("host") == host]
        assert events, "no task result for %s in the job's events:\n%s" % (host, self.output)
        result = dict(events[-1]["event_data"].get("res", {}))
        # the event says how the task ended; a registered result says it with these keys
        ended = events[-1]["event"].rsplit("_", 1)[1]
        if ended in ("failed", "unreachable", "skipped"):
            result.setdefault(ended, True)
        return result

    def recap(self, host="localhost"):
        """(changed, failed) of HOST from the play recap."""
        return (self.stats.get("changed", {}).get(host, 0),
                self.stats.get("failures", {}).get(host, 0) + self.stats.get("dark", {}).get(host, 0))


def private_data_dir():
    """A new private data directory (0700) in memory-backed storage."""
    assert os.path.isdir(MEMORY_BACKED), "no %s: the jobs' secrets would go to disk" % MEMORY_BACKED
    return tempfile.mkdtemp(prefix="kvmsec-job-", dir=MEMORY_BACKED)


def _settings(directory, flags, timeout, extravars, inventory, interpreter):
    env = {"ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".cache" / "collections"), "ANSIBLE_STDOUT_CALLBACK": "default",
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_LOCALHOST_WARNING": "false",
           "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
           "PATH": "%s:%s" % (ROOT / ".venv" / "bin", os.environ.get("PATH", ""))}
    # a cancel callback of its own keeps ansible-runner from taking pytest's SIGINT and SIGTERM
    return dict(private_data_dir=directory, envvars=env, extravars=extravars, quiet=True, timeout=timeout,
                inventory=inventory or "localhost ansible_connection=local ansible_python_interpreter=%s\n" % interpreter,
                cmdline=" ".join(shlex.quote(flag) for flag in flags) or None, cancel_callback=lambda: False)


def _module_settings(name, args, flags, timeout, extravars, interpreter, directory):
    return dict(_settings(directory, flags, timeout, extravars, None, interpreter), host_pattern="localhost",
                module="kvmsec.hardening." + name, module_args=json.dumps(args))


def _job(directory, **settings):
    try:
        return Job(ansible_runner.run(**settings))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def module_job(name, args, *flags, interpreter=VENV_PYTHON, extravars=None, timeout=300):
    """Run kvmsec.hardening.NAME once on localhost (flags: ``--check``, ``--diff``, ``-vvv``).

    ``interpreter`` picks the Python the module runs under: one without the libvirt or SELinux
    bindings proves that the module finds the system Python that has them.
    """
    directory = private_data_dir()
    return _job(directory, **_module_settings(name, args, flags, timeout, extravars, interpreter, directory))


def run_module(name, args, *flags, **kwargs):
    """module_job's (return code, result, whole output)."""
    job = module_job(name, args, *flags, **kwargs)
    return job.rc, job.result(), job.output


class StartedModule:
    """A module job running in the background, for tests that kill it midway: a context manager
    that cancels the job if the test leaves before it ended, and always removes its directory."""

    def __init__(self, name, args, *flags, interpreter=VENV_PYTHON, extravars=None, timeout=300):
        self._directory = private_data_dir()
        self._cancel = threading.Event()
        settings = _module_settings(name, args, flags, timeout, extravars, interpreter, self._directory)
        settings["cancel_callback"] = self._cancel.is_set
        self._thread, self._runner = ansible_runner.run_async(**settings)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._cancel.set()
        self._thread.join(60)
        shutil.rmtree(self._directory, ignore_errors=True)

    def running(self):
        return self._thread.is_alive()

    def wait(self, timeout=300):
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the job is still running after %d s" % timeout
        return Job(self._runner)


def playbook_job(playbook, *flags, inventory=None, interpreter=VENV_PYTHON, extravars=None, timeout=900):
    """Run a playbook; returns the finished Job. Without INVENTORY (a path) it runs on localhost
    under ``interpreter``; an inventory says its hosts' interpreters itself."""
    directory = private_data_dir()
    return _job(directory, playbook=str(playbook),
                **_settings(directory, flags, timeout, extravars, inventory, interpreter))


def changed_tasks(output):
    """Names of the tasks an ansible-playbook run reported as changed."""
    names, task = [], None
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed: "):
            names.append(task)
    return names
