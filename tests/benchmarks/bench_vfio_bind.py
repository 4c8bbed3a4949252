"""Benchmark: what vfio_bind's safety checks cost, against the reads a hand-made bind does.

    .venv/bin/python tests/benchmarks/bench_vfio_bind.py [--functions 512] [--rounds 7] [--no-write]

The host is a fake sysfs tree of a large two-socket server, built with the unit tests' lab
builder (tests/unit/plugins/module_utils/test__vfio_bind.py): the lab's eight functions plus
FUNCTIONS more, four per IOMMU group, every one with a host driver except the passthrough
candidates; 24 NVMe namespaces behind them mounted as filesystems; the default route on a bridge
over a bond. In the same process, alternating the order each round:

* baseline: the reads a shell script binding by hand makes before its three writes - the
  device's driver link, its driver_override and its iommu_group link;
* module: ``plan()`` + ``report()`` for the same device in check mode - selector validation, the
  IOMMU check, every mount, swap, route and console followed to its PCI functions, the group's
  viability, the state and rule files, the predicted result.

The ratio is module time / baseline time, from the medians; the absolute time per call says
whether the checks matter next to the start-up of any Ansible module task, measured here with
``ansible localhost -m ansible.builtin.ping``. Results go to the vfio_bind section of
docs/benchmarks.md unless --no-write.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / ".cache" / "collections"))
sys.path.insert(0, str(ROOT / "tests" / "unit" / "plugins" / "module_utils"))

from ansible_collections.kvmsec.hardening.plugins.module_utils import _vfio_bind as core  # noqa: E402
import test__vfio_bind as lab  # noqa: E402  the unit tests' fake-sysfs builder
from benchmarks_doc import write_section  # noqa: E402  pylint: disable=wrong-import-position

TARGET = "0000:80:00.0"


def build(root, functions):
    """The lab tree plus a server's worth of functions, NVMe mounts and a bonded bridge."""
    devices = list(lab.LAB)
    for index in range(functions):
        bus, function = 0x80 + index // 8, index % 8
        address = "0000:%02x:%02x.%d" % (bus, (index // 4) % 2, function % 4)
        if any(d[0] == address for d in devices):
            continue
        group = 100 + index // 4
        driver = None if address == TARGET else ("nvme" if index % 4 == 1 and index >= 4 else "ixgbe")
        devices.append((address, "8086", "%04x" % (0x1000 + index % 4), "0x010802", 0x80,
                        driver, group))
    lab.make_lab(root, devices=devices)
    # the candidate's group: the others are bound together with it in a real request
    group = [d for d in devices if d[6] == [t for t in devices if t[0] == TARGET][0][6]]
    mounts = [lab.LAB_MOUNTINFO]
    for n, (address, dummy, dummy2, dummy3, dummy4, driver, dummy5) in enumerate(
            d for d in devices if d[5] == "nvme"):
        if n >= 24:
            break
        disk = "sys/devices/pci0000:80/%s/nvme/nvme%d/nvme%dn1" % (address, n, n)
        os.makedirs(os.path.join(root, disk))
        lab.link(root, "sys/dev/block/259:%d" % n, disk)
        mounts.append("%d 26 259:%d / /srv/%d rw - xfs /dev/nvme%dn1 rw\n" % (100 + n, n, n, n))
    lab.write(root, "proc/self/mountinfo", "".join(mounts))
    lab.write(root, "proc/net/route", lab.LAB_ROUTE.replace("eth0", "br0"))
    for name in ("br0", "bond0"):
        os.makedirs(os.path.join(root, "sys/devices/virtual/net", name))
        lab.link(root, "sys/class/net/" + name, "sys/devices/virtual/net/" + name)
    lab.link(root, "sys/devices/virtual/net/br0/lower_bond0", "sys/devices/virtual/net/bond0")
    lab.link(root, "sys/devices/virtual/net/bond0/lower_eth0",
             "sys/devices/pci0000:00/0000:00:02.0/virtio0/net/eth0")
    return [d[0] for d in group]


def baseline(host, address):
    base = "sys/bus/pci/devices/" + address
    return (host.link_name(base + "/driver"), host.read(base + "/driver_override"),
            host.link_name(base + "/iommu_group"))


def module(host, addresses):
    planned = core.plan(host, addresses)
    return core.report(host, planned, applied=False)


def timed(function, *args, repeat=50):
    started = time.perf_counter()
    for dummy in range(repeat):
        function(*args)
    return (time.perf_counter() - started) / repeat


def measure(functions, rounds):
    with tempfile.TemporaryDirectory() as root:
        group = build(root, functions)
        host = core.Host(root)
        result = module(host, group)
        assert [d["driver"] for d in result["devices"]] == ["vfio-pci"] * len(group), result
        rows = []
        for index in range(rounds):
            if index % 2:
                mod, base = timed(module, host, group), timed(baseline, host, TARGET)
            else:
                base, mod = timed(baseline, host, TARGET), timed(module, host, group)
            rows.append((base, mod))
        return rows, len(host.listdir(core.PCI_DEVICES)), len(group)


def ansible_start_up(rounds=3):
    """Wall time of the smallest module task Ansible can run, on this machine."""
    times = []
    for dummy in range(rounds):
        started = time.perf_counter()
        subprocess.run([str(ROOT / ".venv" / "bin" / "ansible"), "localhost", "-m",
                        "ansible.builtin.ping"], check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--functions", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-write", dest="write", action="store_false")
    args = parser.parse_args()
    rows, present, members = measure(args.functions, args.rounds)
    ping = ansible_start_up()
    base = statistics.median(r[0] for r in rows)
    mod = statistics.median(r[1] for r in rows)
    table = "\n".join("| %d | %.3f ms | %.2f ms | %.0f× |" % (i + 1, b * 1e3, m * 1e3, m / b)
                      for i, (b, m) in enumerate(rows))
    text = """
## vfio_bind: the safety checks against a hand-made bind's reads

Measured by `tests/benchmarks/bench_vfio_bind.py` on the development machine (2 cores, shared),
{date}: a fake sysfs tree of {present} PCI functions (the lab's 8 and a server's worth more,
four per IOMMU group), 24 mounted NVMe filesystems, the default route on a bridge over a bond.
Baseline: the reads a script binding by hand makes (driver link, `driver_override`,
`iommu_group` link). Module: `plan()` + `report()` in check mode for the {members} functions of
one group - every check the module makes before it writes. Same process, order alternating.

| round | baseline | module checks | ratio |
|---|---|---|---|
{table}

Median: baseline {base:.3f} ms, module {mod:.2f} ms, ratio {ratio:.0f}×. The checks cost
{mod:.1f} ms per call on this tree: {ratio:.0f} times the three reads they guard, and
{share:.1f}% of the {ping:.2f} s that `ansible localhost -m ansible.builtin.ping` takes here.
""".format(date=time.strftime("%Y-%m-%d"), present=present, members=members, table=table,
           base=base * 1e3, mod=mod * 1e3, ratio=mod / base, ping=ping,
           share=100 * mod / ping)
    print(text)
    if args.write:
        write_section("vfio_bind", text)


if __name__ == "__main__":
    main()
