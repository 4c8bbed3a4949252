"""Benchmark: a no-op harden-kvm.yml run and the audit against the first run, on one lab host,
each with Ansible's own ``linear`` strategy and with Mitogen's ``mitogen_linear``.

One SELinux lab VM (Debian 12 under QEMU TCG), pristine at the start, in the same run:

* first: harden-kvm.yml on the pristine host (everything changes), Ansible's linear strategy;
* no-op: harden-kvm.yml again (changed=0), linear then Mitogen;
* audit: audit-kvm.yml (the same tasks in check mode), linear then Mitogen.

The figures of merit are no-op / first and audit / first (target: at most 0.5 each), and
Mitogen / linear for the same run, with the number of module executions on the host per run:
every one is a round trip an operator pays per host. Both strategies must report the same
control statuses. Module executions are counted from the JSON callback: task results with an
``invocation`` (a module ran), loop items counted one by one, the controller-side report play
left out. Connection settings as examples/ansible.cfg recommends (pipelining). Usage (as root,
from the repository root):

    .venv/bin/python tests/benchmarks/bench_harden_runs.py [--write]

``--write`` replaces the harden_runs section of docs/benchmarks.md with the result.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration" / "on_lab_vm"))
sys.path.insert(0, str(ROOT / "tests" / "lab_vm"))

import kvmlab  # noqa: E402  pylint: disable=wrong-import-position
from conftest import LabVM  # noqa: E402  pylint: disable=wrong-import-position
from benchmarks_doc import write_section  # noqa: E402  pylint: disable=wrong-import-position

VM_NAME = "harden-bench"
REPORT_PLAY = "Report the kvmsec baseline controls"


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


def run(vm, playbook, report_dir, strategy):
    start = time.perf_counter()
    proc = vm.playbook(ROOT / "playbooks" / playbook, strategy=strategy,
                       extra_vars={"kvmsec_report_dir": report_dir, "kvmsec_fail_severity": "none"})
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit("%s failed:\n%s\n%s" % (playbook, proc.stdout[-4000:], proc.stderr[-4000:]))
    stats = json.loads(proc.stdout)["stats"][vm.name]
    report = json.loads((Path(report_dir) / (vm.name + ".json")).read_text())
    statuses = dict((control["id"], control["status"]) for control in report["controls"])
    return elapsed, module_executions(proc.stdout), stats["changed"], statuses


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    os.environ["ANSIBLE_STDOUT_CALLBACK"] = "ansible.posix.json"
    vm = LabVM(kvmlab.boot(VM_NAME, "selinux", False))
    rows = []
    try:
        reports = Path(kvmlab.run_dir(VM_NAME)) / "reports"
        first = run(vm, "harden-kvm.yml", str(reports / "first"), "linear")
        rows.append(("first run", "linear", first, first))
        for label, playbook in (("no-op run", "harden-kvm.yml"), ("audit", "audit-kvm.yml")):
            stock = run(vm, playbook, str(reports / label / "linear"), "linear")
            mitogen = run(vm, playbook, str(reports / label / "mitogen"), "mitogen_linear")
            if mitogen[3] != stock[3]:
                raise SystemExit("%s: the strategies disagree on control statuses:\nlinear %s\nmitogen %s"
                                 % (label, stock[3], mitogen[3]))
            rows += [(label, "linear", stock, stock), (label, "mitogen_linear", mitogen, stock)]
    finally:
        kvmlab.stop(VM_NAME)
    load = " ".join("%.2f" % value for value in os.getloadavg())
    lines = ["## harden-kvm.yml: no-op run and audit against the first run, linear and Mitogen", "",
             "Measured by `tests/benchmarks/bench_harden_runs.py`, %s, load average %s: one SELinux lab "
             "host (Debian 12 under QEMU TCG, 2 cores shared), pipelining on, the lab inventory's "
             "roles and controls; both strategies reported the same %d control statuses."
             % (time.strftime("%Y-%m-%d"), load, len(first[3])), "",
             "| run | strategy | wall time | / first run | / linear | module executions on the host | changed |",
             "|---|---|---|---|---|---|---|"]
    for label, strategy, (seconds, modules, changed, dummy), stock in rows:
        lines.append("| %s | %s | %.0f s | %.2f | %.2f | %d | %d |" % (
            label, strategy, seconds, seconds / first[0], seconds / stock[0], modules, changed))
    lines += ["", "Target: no-op and audit each at most 0.5 of the first run. A module execution costs "
              "about 4 s on the emulated host with Ansible's own strategy (a `ping` alone took 4.2 s), "
              "most of it starting a Python interpreter there: Mitogen keeps one per host for the whole "
              "run (docs/mitogen.md)."]
    body = "\n".join(lines)
    print(body)
    if args.write:
        write_section("harden_runs", body)


if __name__ == "__main__":
    main()
