"""Demonstration: cgroup I/O weights change the split between two competing readers.

Two ``dd iflag=direct`` readers, each in its own cgroup v1 blkio group, read different halves of
one loop device whose scheduler is BFQ (a scratch device, so the host's own disks keep their
scheduler). Measured twice in the same run: equal weights (100:100), then the classic 10:1
(``blkio.bfq.weight`` 1000:100, the weights the guest_resources classes ``high`` and ``normal``
map to on this host). Each reader's throughput is measured over a fixed window, from its
group's own BFQ byte counter. Usage (as root):

    .venv/bin/python tests/benchmarks/demo_io_split.py [--seconds 8] [--size-mib 768] [--write]
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmarks_doc import write_section  # noqa: E402  pylint: disable=wrong-import-position

BLKIO = "/sys/fs/cgroup/blkio"


def loop_device(backing):
    device = subprocess.run(["losetup", "--find", "--show", "--direct-io=on", backing],
                            capture_output=True, text=True, check=True).stdout.strip()
    name = os.path.basename(device)
    Path("/sys/block/%s/queue/scheduler" % name).write_text("bfq")
    return device


def reader(device, group, skip_mib, count_mib):
    """A shell in ``group`` re-reading its half of ``device`` until killed."""
    template = ('echo $$ > %s/cgroup.procs && while :; do dd if=%s of=/dev/null bs=1M '
                'iflag=direct skip=%d count=%d status=none; done')
    script = template % (group, device, skip_mib, count_mib)
    return subprocess.Popen(["sh", "-c", script], start_new_session=True)


def read_bytes(group, device):
    """Bytes BFQ has served the group from ``device``."""
    rdev = os.stat(device).st_rdev
    number = "%d:%d" % (os.major(rdev), os.minor(rdev))
    text = Path(group, "blkio.bfq.io_service_bytes").read_text()
    found = re.search(r"^%s Read (\d+)$" % re.escape(number), text, re.M)
    return int(found.group(1)) if found else 0


def contend(device, groups, weights, seconds, half_mib):
    """MiB/s of each group's reader over ``seconds`` with the given blkio.bfq.weight values."""
    for group, weight in zip(groups, weights):
        Path(group, "blkio.bfq.weight").write_text(str(weight))
    procs = [reader(device, group, index * half_mib, half_mib)
             for index, group in enumerate(groups)]
    try:
        time.sleep(1)  # both readers running before the window opens
        start = [read_bytes(group, device) for group in groups]
        time.sleep(seconds)
        end = [read_bytes(group, device) for group in groups]
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return [(after - before) / 1048576.0 / seconds for before, after in zip(start, end)]


def remove_group(group):
    """rmdir once the killed readers have left the group (dd exits a moment after its shell)."""
    deadline = time.monotonic() + 10
    while os.path.isdir(group):
        try:
            os.rmdir(group)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def section(results, seconds, size_mib):
    rows = "\n".join("| %d:%d | %.1f MiB/s | %.1f MiB/s | %.0f%% / %.0f%% | %.1f : 1 |"
                     % (w[0], w[1], r[0], r[1], 100 * r[0] / sum(r), 100 * r[1] / sum(r),
                        r[0] / r[1]) for w, r in results)
    return """## I/O split with cgroup weights (demonstration)

Measured by `tests/benchmarks/demo_io_split.py`, {date}: two readers (`dd iflag=direct bs=1M`
in a loop) in two cgroup v1 blkio groups read different halves of a {size} MiB loop device
(direct I/O onto a file on the development machine's disk) whose scheduler is BFQ, for
{seconds} s each time, in the same run; throughput is each group's read bytes from
`blkio.bfq.io_service_bytes`. Only `blkio.bfq.weight` differs between the measurements.

| blkio.bfq.weight A:B | reader A | reader B | share A / B | ratio |
|---|---|---|---|---|
{rows}

With equal weights reader A got {equal:.0f}% of the bytes; with 1000:100 it got {weighted:.0f}%.
BFQ shares device time, not bytes, and idles briefly for each group, and the machine is shared
with other jobs, so the byte ratio need not equal the weight ratio. Weights do nothing
on a device whose scheduler is not BFQ: the development machine's own disk uses mq-deadline.
""".format(date=time.strftime("%Y-%m-%d"), size=size_mib,
           seconds=seconds, rows=rows,
           equal=100 * results[0][1][0] / sum(results[0][1]),
           weighted=100 * results[1][1][0] / sum(results[1][1]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--size-mib", type=int, default=768)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    options = parser.parse_args()
    parent = os.path.join(BLKIO, "cgwdemo%s" % uuid.uuid4().hex[:6])
    groups = [os.path.join(parent, "a"), os.path.join(parent, "b")]
    with tempfile.TemporaryDirectory(dir="/var/tmp") as workdir:
        backing = os.path.join(workdir, "disk.img")
        subprocess.run(["dd", "if=/dev/urandom", "of=" + backing, "bs=1M",
                        "count=%d" % options.size_mib, "status=none"], check=True)
        device = loop_device(backing)
        try:
            for group in [parent] + groups:
                os.mkdir(group)
            results = [(weights, contend(device, groups, weights, options.seconds,
                                         options.size_mib // 2))
                       for weights in ((100, 100), (1000, 100))]
        finally:
            for group in reversed([parent] + groups):
                remove_group(group)
            subprocess.run(["losetup", "-d", device], check=False)
    text = section(results, options.seconds, options.size_mib)
    print(text)
    if options.write:
        write_section("io_split", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
