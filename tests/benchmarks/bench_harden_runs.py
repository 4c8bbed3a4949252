"""Benchmark: what one host costs a run of harden-kvm.yml and of the audit, with Ansible's own
``linear`` strategy and with Mitogen's ``mitogen_linear``, and what a second host adds.

One SELinux lab VM (Debian 12 under QEMU TCG), pristine at the start of each first run, in the
same run of this script:

* first: harden-kvm.yml on a pristine host (everything changes), linear, then again on a new
  pristine VM with Mitogen;
* no-op: harden-kvm.yml again (changed=0), linear then Mitogen;
* audit: audit-kvm.yml (the same tasks in check mode), linear then Mitogen;
* two hosts: the no-op run and the audit against the same VM under two inventory names (two SSH
  connections, two Python interpreters on the VM with Mitogen), each strategy.

For every run: the wall time, the module executions on the host (task results with an
``invocation`` in the JSON callback's output, loop items one by one, the controller-side report
play left out) and the controller's CPU seconds: user plus system time of everything the run
started on this machine, ssh clients and ControlPersist masters included, read from a cpuacct
cgroup the run is started in (a cgroup keeps the processes that daemonize, which the parent's
rusage would miss), and the peak memory of its memory cgroup (page cache the run read included,
so an upper bound). Both strategies must report the same control statuses. Connection settings
as examples/ansible.cfg recommends (pipelining, ControlPersist). Usage (as root, from the
repository root):

    .venv/bin/python tests/benchmarks/bench_harden_runs.py [--write]

``--write`` replaces the harden_runs section of docs/benchmarks.md with the result.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "lab_vm"))
sys.path.insert(0, str(ROOT / "tests" / "benchmarks"))

import kvmlab  # noqa: E402  pylint: disable=wrong-import-position
from benchmarks_doc import write_section  # noqa: E402  pylint: disable=wrong-import-position

VM_NAME = "harden-bench"
REPORT_PLAY = "Report the kvmsec baseline controls"
CGROUP = Path("/sys/fs/cgroup")
STRATEGIES = ("linear", "mitogen_linear")
RUN_TIMEOUT = 1200


def module_executions(output):
    """Module runs on the hosts, from ansible.posix.json output."""
    count = 0
    for play in json.loads(output)["plays"]:
        if play["play"]["name"] == REPORT_PLAY:
            continue
        for task in play["tasks"]:
            for result in task["hosts"].values():
                items = result.get("results") if isinstance(result.get("results"), list) else [result]
                count += sum(1 for item in items if isinstance(item, dict) and "invocation" in item)
    return count


def write_inventory(info, names, directory):
    """The VM under each of NAMES: a different address per name (127.0.0.1, localhost), so
    neither ControlPersist nor Mitogen shares one connection between them."""
    directory.mkdir(parents=True, exist_ok=True)
    group_vars = directory / "group_vars"
    if not group_vars.exists():
        group_vars.symlink_to(ROOT / "tests" / "lab_vm" / "inventory" / "group_vars")
    hosts = dict((name, {
        "ansible_host": address, "ansible_port": info["port"], "ansible_user": "root",
        "ansible_ssh_private_key_file": info["key"],
        "ansible_ssh_common_args": " ".join(
            ("-o StrictHostKeyChecking=no", "-o UserKnownHostsFile=/dev/null") + kvmlab.SSH_KEEPALIVE),
    }) for name, address in zip(names, ("127.0.0.1", "localhost")))
    (directory / "hosts.json").write_text(json.dumps({"kvm_hosts": {"hosts": hosts}}))
    return directory


def own_cgroup(controller):
    """This process's cgroup (v1) of CONTROLLER: a run's cgroup goes under it, inside any limit
    this machine's own jobs run with."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        dummy, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return CGROUP / controller / path.lstrip("/")
    raise SystemExit("no cgroup v1 %s controller here" % controller)


class RunCgroups:
    """A cpuacct and a memory cgroup a run starts in: its CPU time and peak memory, every
    process it left (ControlPersist masters) killed afterwards."""

    def __init__(self, label):
        name = "kvmsec-bench-%d-%s" % (os.getpid(), label)
        self.paths = [own_cgroup(controller) / name for controller in ("cpuacct", "memory")]
        for path in self.paths:
            path.mkdir()

    def enter(self):
        for path in self.paths:
            (path / "cgroup.procs").write_text("0")

    def close(self):
        cpuacct, memory = self.paths
        seconds = int((cpuacct / "cpuacct.usage").read_text()) / 1e9
        peak = int((memory / "memory.max_usage_in_bytes").read_text()) / 2 ** 20
        for pid in (cpuacct / "cgroup.procs").read_text().split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while (cpuacct / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.1)
        for path in self.paths:
            path.rmdir()
        return seconds, peak


def run(inventory, playbook, report_dir, strategy, label):
    env = dict(kvmlab.ansible_env(strategy), ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
               ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".cache" / "collections"))
    argv = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(inventory), str(ROOT / "playbooks" / playbook),
            "-e", json.dumps({"kvmsec_report_dir": str(report_dir), "kvmsec_fail_severity": "none"})]
    cgroups = RunCgroups(label)
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=env,
                              timeout=RUN_TIMEOUT, preexec_fn=cgroups.enter)
    finally:
        elapsed = time.perf_counter() - start
        cpu, memory = cgroups.close()
    if proc.returncode != 0:
        raise SystemExit("%s failed:\n%s\n%s" % (playbook, proc.stdout[-4000:], proc.stderr[-4000:]))
    output = json.loads(proc.stdout)
    statuses = {}
    for host in output["stats"]:
        report = json.loads((Path(report_dir) / (host + ".json")).read_text())
        statuses[host] = dict((control["id"], control["status"]) for control in report["controls"])
    changed = sum(stats["changed"] for stats in output["stats"].values())
    return {"seconds": elapsed, "cpu": cpu, "memory": memory, "modules": module_executions(proc.stdout),
            "changed": changed, "statuses": statuses}


def agree(label, results):
    """Both strategies, and every host of a run, report the same control statuses."""
    seen = [statuses for result in results for statuses in result["statuses"].values()]
    if any(statuses != seen[0] for statuses in seen):
        raise SystemExit("%s: the runs disagree on control statuses: %s" % (label, seen))


def first_run(reports, strategy):
    """harden-kvm.yml on a pristine VM, which is left running."""
    info = kvmlab.boot(VM_NAME, "selinux", False)
    inventory = write_inventory(info, ["kvm-a"], reports / strategy / "inventory-1")
    return info, run(inventory, "harden-kvm.yml", reports / strategy / "first", strategy, "first")


def measure(reports):
    rows, pairs = [], []
    try:
        dummy, result = first_run(reports, "linear")
        rows.append(("first run", "linear", result))
        kvmlab.stop(VM_NAME)
        info, result = first_run(reports, "mitogen_linear")
        rows.append(("first run", "mitogen_linear", result))
        agree("first run", [row[2] for row in rows])
        single = write_inventory(info, ["kvm-a"], reports / "inventory-1")
        double = write_inventory(info, ["kvm-a", "kvm-b"], reports / "inventory-2")
        for label, playbook in (("no-op run", "harden-kvm.yml"), ("audit", "audit-kvm.yml")):
            found = []
            for strategy in STRATEGIES:
                result = run(single, playbook, reports / label / strategy / "1", strategy, "one")
                both = run(double, playbook, reports / label / strategy / "2", strategy, "two")
                rows.append((label, strategy, result))
                pairs.append((label, strategy, result, both))
                found += [result, both]
            agree(label, found)
    finally:
        kvmlab.stop(VM_NAME)
    return rows, pairs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kvmsec-bench-") as tmp:
        rows, pairs = measure(Path(tmp))
    first = dict((strategy, result) for label, strategy, result in rows if label == "first run")
    linear = dict((label, result) for label, strategy, result in rows if strategy == "linear")
    controls = len(next(iter(rows[0][2]["statuses"].values())))
    load = " ".join("%.2f" % value for value in os.getloadavg())
    lines = ["## harden-kvm.yml and the audit: what a host costs, linear and Mitogen", "",
             "Measured by `tests/benchmarks/bench_harden_runs.py`, %s, load average %s: one SELinux lab "
             "host (Debian 12 under QEMU TCG, 2 cores shared with this machine), pipelining and "
             "ControlPersist on, the lab inventory's roles and controls; every run reported the same %d "
             "control statuses. Controller CPU is user plus system time of everything the run started "
             "on the controller (ansible-playbook, its forks, ssh), from a cpuacct cgroup; peak memory from "
             "a memory cgroup, page cache included."
             % (time.strftime("%Y-%m-%d"), load, controls), "",
             "| run | strategy | wall time | / first run | / linear | module executions on the host "
             "| controller CPU | changed |", "|---|---|---|---|---|---|---|---|"]
    for label, strategy, result in rows:
        lines.append("| %s | %s | %.0f s | %.2f | %.2f | %d | %.1f s | %d |" % (
            label, strategy, result["seconds"], result["seconds"] / first[strategy]["seconds"],
            result["seconds"] / linear[label]["seconds"], result["modules"], result["cpu"], result["changed"]))
    lines += ["", "The same VM under two inventory names in one run (two connections, and with Mitogen two "
              "interpreters on the VM): what a second host adds to the controller.", "",
              "| run | strategy | wall time, 1 host / 2 hosts | controller CPU, 1 host / 2 hosts "
              "| CPU the second host added | peak memory, 1 host / 2 hosts |", "|---|---|---|---|---|---|"]
    for label, strategy, one, two in pairs:
        lines.append("| %s | %s | %.0f s / %.0f s | %.1f s / %.1f s | %.1f s | %.0f MiB / %.0f MiB |" % (
            label, strategy, one["seconds"], two["seconds"], one["cpu"], two["cpu"], two["cpu"] - one["cpu"],
            one["memory"], two["memory"]))
    lines += ["", "Target: no-op and audit each at most 0.5 of the first run. With two names for one VM, "
              "the VM does twice the work on the same 2 emulated CPUs, which share this machine's 2 cores "
              "with the controller: the two-host wall time says nothing about how hosts scale (real hosts "
              "work in parallel on their own CPUs); the controller CPU a second host adds is what a "
              "fleet's controller pays per host (see \"Sizing a controller\" below)."]
    body = "\n".join(lines)
    print(body)
    if args.write:
        write_section("harden_runs", body)


if __name__ == "__main__":
    main()
