"""Benchmark: five SELinux modules installed one per selinux_module call vs all five in one call.

Both sides run in the same lab VM (SELinux enforcing, Debian 12, under QEMU TCG), in the same
run, through Ansible exactly as a playbook would call the module:

* one per call: five calls, each installing one new module (five policy transactions);
* batched: one call installing five other new modules (one transaction);
* no-op: the batched call again, where every module already matches (no transaction).

The figure of merit is batched / one-module call (target: at most 1.3): installing five modules
in one call should cost about what one costs, since the policy rebuild dominates. Rounds
alternate which side goes first. Usage (as root, from the repository root):

    .venv/bin/python tests/benchmarks/bench_selinux_module.py [--rounds 1] [--write]

``--write`` replaces the selinux_module section of docs/benchmarks.md with the result.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration" / "on_lab_vm"))
sys.path.insert(0, str(ROOT / "tests" / "lab_vm"))

import kvmlab  # noqa: E402  pylint: disable=wrong-import-position
from conftest import LabVM  # noqa: E402  pylint: disable=wrong-import-position
from benchmarks_doc import write_section  # noqa: E402  pylint: disable=wrong-import-position

VM_NAME = "sel-bench"
PERMS = ["perfmon", "wake_alarm", "syslog", "block_suspend", "audit_read"]


def source(name, index):
    return ("module %s 1.0;\nrequire { type virtd_t; class capability2 %s; }\n"
            "allow virtd_t self:capability2 %s;\n" % (name, PERMS[index], PERMS[index]))


def call(vm, modules):
    start = time.perf_counter()
    result, output = vm.module("selinux_module", {"modules": modules})
    elapsed = time.perf_counter() - start
    if result.get("failed"):
        raise SystemExit("selinux_module failed: %s\n%s" % (result.get("msg"), output))
    return elapsed, result


def one_round(vm, number, batched_first):
    singles = [{"name": "kvmsec_bench%d_s%d" % (number, i), "content": None} for i in range(5)]
    batch = [{"name": "kvmsec_bench%d_b%d" % (number, i), "content": None} for i in range(5)]
    for group in (singles, batch):
        for index, module in enumerate(group):
            module["content"] = source(module["name"], index)
    times = {}

    def run_singles():
        times["single"] = []
        for module in singles:
            elapsed, result = call(vm, [module])
            assert result["transaction"] is not None
            times["single"].append(elapsed)

    def run_batch():
        elapsed, result = call(vm, batch)
        assert result["transaction"].count("-i") == 5
        times["batch"] = elapsed

    for side in ((run_batch, run_singles) if batched_first else (run_singles, run_batch)):
        side()
    elapsed, result = call(vm, batch)
    assert result["changed"] is False and result["transaction"] is None
    times["noop"] = elapsed
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    os.environ["PATH"] = "%s:%s" % (ROOT / ".venv" / "bin", os.environ.get("PATH", ""))
    os.environ.setdefault("ANSIBLE_COLLECTIONS_PATH", str(ROOT / ".cache" / "collections"))

    vm = LabVM(kvmlab.boot(VM_NAME, "selinux", False))
    try:
        rounds = [one_round(vm, n, batched_first=n % 2 == 1) for n in range(args.rounds)]
    finally:
        kvmlab.stop(VM_NAME)

    single = statistics.mean(t for r in rounds for t in r["single"])
    batch = statistics.mean(r["batch"] for r in rounds)
    noop = statistics.mean(r["noop"] for r in rounds)
    ratio = batch / single
    verdict = "meets" if ratio <= 1.3 else "misses"
    text = (
        "## selinux_module: five modules in one call vs one per call\n\n"
        "`tests/benchmarks/bench_selinux_module.py`, lab VM (Debian 12, SELinux enforcing, QEMU "
        "TCG, 2 host cores shared), %d round(s), each call a real `ansible-playbook` run.\n\n"
        "| case | policy transactions | wall time |\n|---|---|---|\n"
        "| one module per call (mean of %d calls) | 1 per call | %.1f s |\n"
        "| five modules per call x 5 | 5 | %.1f s |\n"
        "| five modules in one call | 1 | %.1f s |\n"
        "| the same five again, all matching | 0 | %.1f s |\n\n"
        "Batched / one module: **%.2f** (target <= 1.3: %s). Five modules cost %.1fx less in one "
        "call than one per call; a run with nothing to change costs no policy rebuild.\n"
        % (len(rounds), 5 * len(rounds), single, 5 * single, batch, noop, ratio, verdict,
           5 * single / batch))
    print(text)
    if args.write:
        write_section("selinux_module", text)
    return 0 if ratio <= 1.3 else 1


if __name__ == "__main__":
    sys.exit(main())
