"""Benchmark: I/O and CPU weights of 50 guests in one cgroup_weight task vs 100 virsh calls.

Both sides do the same work in the same run, against the same 50 real TCG guests started
paused (running QEMU processes with real cgroups, no guest CPU load on a 2-core machine):
set the I/O weight and the CPU weight of every guest, live and in the persistent definition.

* baseline: per guest ``virsh blkiotune NAME --weight W --live --config`` and
  ``virsh schedinfo NAME --set cpu_shares=S --live --config`` (100 processes);
* module: one ``ansible localhost -m kvmsec.hardening.cgroup_weight`` with all 50 guests
  (Ansible's own start-up included);
* the same 100 virsh calls made by two ``ansible.builtin.command`` loops in one playbook, as a
  role without the module would make them.

The rounds alternate which side goes first and set different values each round, so every
call really changes something. Usage (as root, libvirtd running):

    .venv/bin/python tests/benchmarks/bench_cgroup_weight.py [--guests 50] [--rounds 3] [--write]

``--write`` replaces the cgroup_weight section of docs/benchmarks.md with the result.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks_doc import write_section

ROOT = Path(__file__).resolve().parents[2]
URI = "qemu:///system"
DOMAIN_XML = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator><video><model type='none'/></video>
<memballoon model='none'/></devices></domain>"""


def virsh(*args):
    proc = subprocess.run(["virsh", "-c", URI] + list(args), capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit("virsh %s failed: %s" % (" ".join(args), proc.stderr.strip()))
    return proc.stdout


def create_guests(count, workdir, names):
    """Define and start paused ``count`` guests, appending each name as soon as it exists."""
    prefix = "cgwb%s-" % uuid.uuid4().hex[:6]
    for index in range(count):
        name = "%s%02d" % (prefix, index)
        xml = Path(workdir) / (name + ".xml")
        xml.write_text(DOMAIN_XML.format(name=name))
        virsh("define", str(xml))
        names.append(name)
        virsh("start", "--paused", name)


def remove_guests(names):
    for name in names:
        subprocess.run(["virsh", "-c", URI, "destroy", name], capture_output=True, check=False)
        subprocess.run(["virsh", "-c", URI, "undefine", name], capture_output=True, check=False)


def baseline(names, io_weight, cpu_weight):
    shares = cpu_weight * 1024 // 100
    start = time.perf_counter()
    for name in names:
        virsh("blkiotune", name, "--weight", str(io_weight), "--live", "--config")
        virsh("schedinfo", name, "--set", "cpu_shares=%d" % shares, "--live", "--config")
    return time.perf_counter() - start


def module(names, io_weight, cpu_weight):
    args = {"guests": [{"name": name, "io_weight": io_weight, "cpu_weight": cpu_weight}
                       for name in names]}
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="minimal", ANSIBLE_NOCOLOR="1",
               ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".cache" / "collections"))
    argv = [str(ROOT / ".venv" / "bin" / "ansible"), "localhost", "-i", "localhost,",
            "-c", "local", "-e", "ansible_python_interpreter=%s" % (ROOT / ".venv/bin/python"),
            "-m", "kvmsec.hardening.cgroup_weight", "-a", json.dumps(args)]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or "CHANGED" not in proc.stdout:
        raise SystemExit("the module run failed or changed nothing:\n%s%s"
                         % (proc.stdout[-2000:], proc.stderr[-2000:]))
    return elapsed


LOOP_PLAY = """- name: Weights the way a role without the module would set them
  hosts: localhost
  gather_facts: false
  tasks:
    - name: I/O weight, live and persistent
      ansible.builtin.command: virsh -c {uri} blkiotune {{{{ item }}}} --weight {io} --live --config
      loop: {names}
      changed_when: true
    - name: CPU shares, live and persistent
      ansible.builtin.command: virsh -c {uri} schedinfo {{{{ item }}}} --set cpu_shares={shares} --live --config
      loop: {names}
      changed_when: true
"""


def ansible_loop(names, io_weight, cpu_weight):
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as play:
        play.write(LOOP_PLAY.format(uri=URI, io=io_weight, shares=cpu_weight * 1024 // 100,
                                    names=json.dumps(names)))
        play.flush()
        argv = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", "localhost,", "-c",
                "local", "-e", "ansible_python_interpreter=%s" % (ROOT / ".venv/bin/python"),
                play.name]
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit("the command loop failed:\n%s" % proc.stdout[-2000:])
    return elapsed


def check(names, io_weight, cpu_weight):
    """Both sides must leave the same live and persistent values: spot-check first and last."""
    for name in (names[0], names[-1]):
        for flag in ("--live", "--config"):
            weight = re.search(r"^weight\s*:\s*(\d+)", virsh("blkiotune", name, flag), re.M)
            shares = re.search(r"^cpu_shares\s*:\s*(\d+)", virsh("schedinfo", name, flag), re.M)
            found = (int(weight.group(1)), int(shares.group(1)))
            if found != (io_weight, cpu_weight * 1024 // 100):
                raise SystemExit("%s %s has %s, expected %s" % (name, flag, found,
                                                                (io_weight, cpu_weight)))


def measure(names, rounds):
    times = {"virsh": [], "module": [], "loop": []}
    for index in range(rounds):
        sides = [("virsh", baseline), ("module", module), ("loop", ansible_loop)]
        for offset, (side, run) in enumerate(sides if index % 2 == 0 else sides[::-1]):
            value = 110 + 10 * (3 * index + offset)  # new values every call
            times[side].append(run(names, value, value))
            check(names, value, value)
    return times


def faster(baseline_seconds, module_seconds):
    ratio = baseline_seconds / module_seconds
    if ratio >= 1:
        return "the single module task is %.1f× faster" % ratio
    return "the module task is %.1f× slower" % (1 / ratio)


def section(count, times, setup_seconds):
    median = dict((side, statistics.median(values)) for side, values in times.items())
    rows = "\n".join("| %d | %.2f s | %.2f s | %.2f s | %.1f× | %.1f× |"
                     % (i + 1, v, m, loop, v / m, loop / m) for i, (v, m, loop)
                     in enumerate(zip(times["virsh"], times["module"], times["loop"])))
    return """## cgroup_weight: {count} guests in one task vs {calls} virsh calls

Measured by `tests/benchmarks/bench_cgroup_weight.py` on the development machine (2 cores,
libvirt 9.0, cgroup v1 `blkio.bfq.weight`/`cpu.shares`), {date}. {count} real TCG guests,
defined and started paused (`virsh start --paused`: real QEMU processes and cgroups, no guest
CPU load; starting them took {setup:.0f} s). Each side sets the I/O and CPU weight of every
guest, live and persistent, with new values each time: (A) `virsh blkiotune NAME --weight W
--live --config` and `virsh schedinfo NAME --set cpu_shares=S --live --config` per guest, one
after another; (B) one `ansible localhost -m kvmsec.hardening.cgroup_weight` with all guests;
(C) the same virsh calls as two `ansible.builtin.command` loops in one playbook; the rounds alternate the order of the
sides, and the values are read back after each one. The machine is shared with other jobs
(1-minute load average {load:.1f} at the end of the run), which spreads the rounds.

| round | A: {calls} × virsh | B: 1 × module task | C: {calls} × virsh as command loops | A ÷ B | C ÷ B |
|---|---|---|---|---|---|
{rows}

Medians: bare virsh loop {virsh:.2f} s, module {module:.2f} s, Ansible command loop
{loop:.2f} s. Against the bare virsh loop {vs_virsh}; against the same calls made
from Ansible tasks, as a role without the module would, {vs_loop}. The module's time includes
Ansible's start-up and reading every guest's live and persistent values before writing (which
the virsh loops skip: they neither compare nor report).
""".format(count=count, calls=2 * count, rows=rows,
           date=time.strftime("%Y-%m-%d"), setup=setup_seconds, load=os.getloadavg()[0],
           virsh=median["virsh"],
           module=median["module"], loop=median["loop"],
           vs_virsh=faster(median["virsh"], median["module"]),
           vs_loop=faster(median["loop"], median["module"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--guests", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        names = []
        try:
            create_guests(options.guests, workdir, names)
            setup = time.perf_counter() - start
            times = measure(names, options.rounds)
        finally:
            remove_guests(names)
    text = section(options.guests, times, setup)
    print(text)
    if options.write:
        write_section("cgroup_weight", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
